"""The `nnkd_distill --max-dice-loss D` search measured over seeds, against the frontier's answer (issue 47).

    python benchmarks/search_report.py -o docs/benchmarks/search_multiorgan2d_6000 \
        --frontier docs/benchmarks/frontier_multiorgan2d_6000_seed0/results.json [more frontiers …] \
        --searches OUT_s0 OUT_s1 OUT_s2

Each OUT is an `nnkd_distill --max-dice-loss D --test` output of one seed (its distill.json: the search's
candidates, the chosen student, its validation and test Dice, the teacher's). Writes OUT/results.json (per seed:
the choice, its Dice on validation and on the test cases against the teacher's, within D or not, the search's
training time against the chosen student's alone; each frontier's answer — the smallest budget whose default-KD
student is within D of that frontier's teacher — and how many ladder steps each choice is from it) and OUT/report.md.
"""

import argparse
import json
import statistics
from pathlib import Path

from nnkd.atomic import write_json_atomic


def seed_row(distill: dict) -> dict:
    search, test = distill["search"], distill.get("test") or {}
    chosen = next((c for c in search["candidates"] if c["budget"] == search["chosen"]), None)
    loss = 100 * (test["teacher_dice"] - test["student_dice"]) if test else None
    return {"seed": distill.get("seed"), "chosen": search["chosen"], "parameters": chosen and chosen["parameters"],
            "gflops_per_patch": chosen and chosen["gflops_per_patch"], "validation_dice": chosen and chosen["dice"],
            "teacher_validation_dice": search["teacher_dice"], "test_dice": test.get("student_dice"),
            "teacher_test_dice": test.get("teacher_dice"), "test_loss_points": loss,
            "within_on_test": loss is not None and loss <= search["max_dice_loss"],
            "search_seconds": search["search_seconds"], "cost_vs_chosen_alone": search["cost_vs_chosen_alone"],
            "candidates": search["candidates"]}


def summary(rows: list[dict], frontiers: dict[str, dict], max_dice_loss: float) -> dict:
    ladder = sorted({c["budget"] for r in rows for c in r["candidates"]},
                    key=lambda b: -next(c["parameters"] for r in rows for c in r["candidates"] if c["budget"] == b))
    answers = {}
    for name, frontier in frontiers.items():
        answer = (frontier["frontier"]["smallest_within_points"].get(f"{max_dice_loss:g}") or {}).get(
            frontier["frontier"]["default_method"])
        answers[name] = {"answer": answer and answer["budget"], "steps": [
            abs(ladder.index(r["chosen"]) - ladder.index(answer["budget"]))
            if answer and r["chosen"] in ladder and answer["budget"] in ladder else None for r in rows]}
    costs = [r["cost_vs_chosen_alone"] for r in rows if r["cost_vs_chosen_alone"]]
    return {"ladder": ladder, "frontiers": answers,
            "within_on_test": sum(r["within_on_test"] for r in rows), "seeds": len(rows),
            "cost_vs_chosen_alone": {"mean": statistics.mean(costs), "min": min(costs), "max": max(costs)}
            if costs else None}


def report(result: dict) -> str:
    s, d = result["summary"], result["max_dice_loss"]
    lines = [f"# `nnkd_distill --max-dice-loss {d:g}`: {result['dataset']} ({result['configuration']})", "",
             f"Teacher: `{result['teacher']}`; students {result['epochs']} × {result['iterations_per_epoch']} "
             f"iterations per candidate; ladder {', '.join(s['ladder'])}; machine: {result['machine']}.", "",
             "| seed | chosen | params | GFLOPs/patch | val Dice (teacher) | test Dice (teacher) | test loss (points) "
             "| within D on test | search / chosen alone |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["seeds"]:
        lines.append(f"| {r['seed']} | {r['chosen']} | {r['parameters']:,} | {r['gflops_per_patch']:.4f} | "
                     f"{r['validation_dice']:.4f} ({r['teacher_validation_dice']:.4f}) | {r['test_dice']:.4f} "
                     f"({r['teacher_test_dice']:.4f}) | {r['test_loss_points']:+.2f} | "
                     f"{'yes' if r['within_on_test'] else 'no'} | {r['cost_vs_chosen_alone']:.2f}× |")
    cost = s["cost_vs_chosen_alone"]
    lines += ["", f"- Within {d:g} point(s) of the teacher on the test cases: {s['within_on_test']} of {s['seeds']} "
              "seeds (target ≥ 2 of 3).",
              *[f"- The frontier's answer ({name}): {f['answer']}; ladder steps from it per seed: "
                f"{', '.join(str(x) for x in f['steps'])} (target: 0 or 1)." for name, f in s["frontiers"].items()],
              f"- The search's training time over the chosen student's alone: mean {cost['mean']:.2f}× "
              f"(min {cost['min']:.2f}, max {cost['max']:.2f}; target ≤ 3×).", "", "## Candidates per seed", "",
              "| seed | budget | params | epochs trained | EMA pseudo Dice | val Dice | status | why | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["seeds"]:
        for c in r["candidates"]:
            dice = f"{c['dice']:.4f}" if c["dice"] is not None else "–"
            ema = f"{c['ema_pseudo_dice']:.4f}" if c["ema_pseudo_dice"] is not None else "–"
            lines.append(f"| {r['seed']} | {c['budget']} | {c['parameters']:,} | {c['epochs_trained']} | {ema} | "
                         f"{dice} | {c['status']} | {c['reason']} | {c['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("-o", required=True, type=Path, help="the report's folder")
    parser.add_argument("--frontier", required=True, type=Path, nargs="+", help="frontier studies' results.json")
    parser.add_argument("--machine", default=None, help="the CPU or GPU the searches ran on")
    parser.add_argument("--searches", required=True, nargs="+", type=Path, help="nnkd_distill outputs, one per seed")
    args = parser.parse_args()
    records = [json.loads((folder / "distill.json").read_text()) for folder in args.searches]
    rows = [seed_row(r) for r in records]
    first = records[0]
    search = first["search"]
    result = {"dataset": first["dataset"], "configuration": first["configuration"], "teacher": first["teacher"],
              "max_dice_loss": search["max_dice_loss"], "objective": search.get("objective", "params"),
              "epochs": search["epochs"], "iterations_per_epoch": search["iterations_per_epoch"],
              "machine": args.machine or "not recorded", "test_cases":
              (first.get("test") or {}).get("cases"), "seeds": rows}
    frontiers = {path.parent.name: json.loads(path.read_text()) for path in args.frontier}
    result["summary"] = summary(rows, frontiers, search["max_dice_loss"])
    args.o.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.o / "results.json", result)
    (args.o / "report.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
