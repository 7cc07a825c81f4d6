"""README.md's results table, rendered from committed results.json files (issue 48).

    python benchmarks/readme_table.py           # rewrite the block between the markers in README.md
    python benchmarks/readme_table.py --check   # exit 1 and print the difference when README.md is stale

Every number in the block comes from one of the result folders in SOURCES. What no results.json records is in
FACTS below, each with the page that states it; nothing else is typed in here. tests/test_readme.py fails when
README.md's block differs from what this script renders, so a changed results.json needs a rerun of this script.
"""

from __future__ import annotations

import argparse
import difflib
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "benchmarks"
START, END = "<!-- results:start -->", "<!-- results:end -->"

# The committed result folders the table reads (docs/benchmarks/<folder>/results.json), all current in
# docs/benchmarks/INDEX.md.
SOURCES = {
    "frontier": "frontier_multiorgan2d_12000",
    "all_labels": "synthetic_all_labels",
    "labeled4": "synthetic_labeled4",
    "colin27": "colin27_label_free",
    "deploy_ct": "deploy_ct_zen5_rounds",
    "deploy_head": "deploy_colin27_zen5_rounds",
}

# Facts no results.json records, each from the page that states it.
FACTS = {
    # docs/studies/synthetic_study.md, "The full synthetic study as one command: the low-label half (2026-12-04)": "the teacher —
    # nnU-Net's default network, 48 × 20 iterations"; docs/benchmarks/INDEX.md: "nnU-Net 3d, 960 (48 × 20)". The
    # all-label half (synthetic_all_labels) reused that teacher (same section).
    "synthetic_teacher_iterations": 48 * 20,
    # docs/studies/colin27.md, "Colin27 without annotation: deepbet's masks as the only labels": the students were trained
    # with `--epochs 40 --iterations-per-epoch 20`; docs/benchmarks/INDEX.md: "800 (40 × 20, from benchmarks.md)".
    "colin27_student_iterations": 40 * 20,
    # docs/results.md, section (d): "time per case in torch on one thread, against deepbet timed in the same run;
    # machine not recorded".
    "colin27_timing": "torch, one thread, against deepbet in the same run; CPU not recorded",
    # benchmarks/deploy_latency.py (and each deploy report.md): "Random weights (seed 0): time does not depend on them".
    "deploy_weights": "random weights",
    # docs/benchmarks/INDEX.md: "*Zen 4* = "AMD EPYC, cpu family 25, model 17"", named as in docs/deploy.md.
    "cpu_names": {"AMD EPYC, cpu family 25, model 17": "Zen 4", "AMD EPYC, cpu family 26, model 2": "Zen 5"},
    # benchmarks/deploy_latency.py's RUNTIME_LABELS, shortened for the table.
    "runtime_names": {"torch": "torch", "onnx": "ONNX Runtime", "int8": "int8", "fast": "nnkd_predict's fast path"},
}


def load(key: str, root: Path = ROOT) -> dict:
    return json.loads((root / "docs" / "benchmarks" / SOURCES[key] / "results.json").read_text())


def link(key: str) -> str:
    return f"[{SOURCES[key]}](docs/benchmarks/{SOURCES[key]}/report.md)"


def millions(n: float) -> str:
    m = n / 1e6
    return f"{m:.1f} M" if m >= 10 else f"{m:.2f} M" if m >= 1 else f"{m:.3f} M"


def fraction(teacher: float, student: float) -> str:
    ratio = teacher / student
    return f"1/{ratio:.0f}" if ratio >= 100 else f"1/{ratio:.1f}"


def iterations(n: int) -> str:
    return f"{n:,} it."


def dice(mean: float, std: float | None = None) -> str:
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def cpu(machine: dict) -> str:
    name = FACTS["cpu_names"].get(machine["cpu"])
    return f"{machine['cpu']}{f' ({name})' if name else ''}, {machine['cpus']} cores"


def frontier_rows(root: Path) -> list[list[str]]:
    r = load("frontier", root)
    teacher = r["teacher"]
    converged = "converged" if teacher["plateau"]["converged"] else "not converged"
    task = f"synthetic abdomen, 2D, {len(r['labels'])} structures"
    teacher_cell = f"nnU-Net 2d, {millions(teacher['parameters'])}, {iterations(teacher['iterations'])}, {converged}"
    default = r["frontier"]["default_method"]
    rows = []
    # Two points of the frontier: the smallest distilled student within 1 point of the teacher (the frontier's own
    # answer), and the smallest student measured.
    within = r["frontier"]["smallest_within_points"]["1"][default]["budget"]
    for budget in (within, min(r["budget_fractions"], key=r["budget_fractions"].get)):
        by_label = {row["label"]: row for row in r["frontier"]["rows"] if row["budget"] == budget}
        alone, kd = by_label[r["frontier"]["no_kd"]], by_label[default]
        assert kd["method"] == "logit" and kd["cached"] and alone["dice"]["n"] == kd["dice"]["n"] == r["seeds"]
        student = (f"{millions(kd['parameters'])} ({fraction(teacher['parameters'], kd['parameters'])}), "
                   f"{iterations(r['students_schedule']['iterations'])}")
        rows.append([task, teacher_cell, student,
                     f"{dice(alone['dice']['mean'])} / {dice(kd['dice']['mean'])} / {dice(teacher['dice'])}, "
                     f"{seeds(r['seeds'])}",
                     "not measured", link("frontier")])
    return rows


def synthetic_row(key: str, root: Path) -> list[str]:
    r = load(key, root)
    teacher = r["teacher"]
    summary = {(s["budget"], s["label"]): s for s in r["summary"]}
    alone, kd = summary[("tiny", "none")], summary[("tiny", "logit (cached)")]
    assert kd["method"] == "logit" and kd["cached"] and alone["dice"]["n"] == kd["dice"]["n"] == r["seeds"]
    runs = [run for run in r["runs"] if run["budget"] == "tiny" and run["label"] == kd["label"]]
    (student_params,) = {run["parameters"] for run in runs}
    assert len(runs) == r["seeds"]
    labels = "all labels" if r["labeled"] is None else f"{r['labeled']} labelled cases"
    task = f"synthetic organ, lesion, vessel, 3D, {labels}"
    teacher_cell = (f"nnU-Net 3d_fullres, {millions(teacher['parameters'])}, "
                    f"{iterations(FACTS['synthetic_teacher_iterations'])}")
    schedule = r["schedule"]["epochs"] * r["schedule"]["iterations_per_epoch"]
    student = f"{millions(student_params)} ({fraction(teacher['parameters'], student_params)}), {iterations(schedule)}"
    speedup = statistics.mean(run["speedup_torch"] for run in runs)
    machine = ", ".join(part.strip() for part in r["machine"].split(",")[:2])
    return [task, teacher_cell, student,
            f"{dice(alone['dice']['mean'], alone['dice']['std'])} / {dice(kd['dice']['mean'], kd['dice']['std'])} / "
            f"{dice(teacher['dice'])}, {seeds(r['seeds'])}",
            f"{speedup:.1f}× ({machine}, model not recorded)", link(key)]


def colin27_row(root: Path) -> list[str]:
    r = load("colin27", root)
    teacher = r["teacher"]
    student = "3d_fullres:nnKDPlans_gflops2.4-nnUNetPlans_3.2mm"
    runs = {labels: [run for run in r["runs"] if run["student"] == student and run["labels"] == labels]
            for labels in ("bet", "deepbet")}
    per_seed = {labels: [statistics.mean(run["test_dice_vs_bet"]) for run in found] for labels, found in runs.items()}
    assert len(per_seed["bet"]) == len(per_seed["deepbet"]) == len(r["settings"]["seeds"])
    (params,) = {run["params"] for found in runs.values() for run in found}
    speedup = teacher["seconds_per_case"] / statistics.mean(run["seconds_per_case"] for run in runs["deepbet"])
    return ["Colin27 brain extraction, T1 MRI of one real subject", f"deepbet, {millions(teacher['params'])}, pretrained",
            f"{millions(params)} ({fraction(teacher['params'], params)}), "
            f"{iterations(FACTS['colin27_student_iterations'])}",
            f"{dice(statistics.mean(per_seed['bet']), statistics.stdev(per_seed['bet']))} / "
            f"{dice(statistics.mean(per_seed['deepbet']), statistics.stdev(per_seed['deepbet']))} / "
            f"{dice(statistics.mean(teacher['test_dice_vs_bet']))}, {seeds(len(per_seed['bet']))}",
            f"{speedup:.1f}× ({FACTS['colin27_timing']})", link("colin27")]


def deploy_measurement(r: dict, model: str, runtime: str = "torch") -> dict:
    (row,) = [x for x in r["rows"] if x["model"] == model and x["runtime"] == runtime and not x["mirroring"]]
    return row


def deploy_row(root: Path) -> list[str]:
    cases = {key: load(key, root) for key in ("deploy_ct", "deploy_head")}
    names = {"deploy_ct": "CT-like case", "deploy_head": "Colin27 head"}
    (machine,) = {json.dumps({k: r["machine"][k] for k in ("cpu", "cpus")}, sort_keys=True) for r in cases.values()}
    (rounds,) = {len(x["seconds_per_case_each_round"]) for r in cases.values() for x in r["rows"]}

    def both(value) -> str:
        return " / ".join(value(key, r) for key, r in cases.items())

    def ratio(r: dict, runtime: str) -> float:  # from the seconds: results.json's speedup_same_runtime is rounded
        return (deploy_measurement(r, "teacher", runtime)["seconds_per_case"]
                / deploy_measurement(r, "tiny", runtime)["seconds_per_case"])

    def same_runtime(runtime: str) -> str:
        return both(lambda key, r: f"{ratio(r, runtime):.1f}×")

    shapes = both(lambda key, r: f"{names[key]} "
                                 f"{'×'.join(map(str, deploy_measurement(r, 'teacher')['original_shape']))}")
    runtimes = [x["runtime"] for x in cases["deploy_ct"]["rows"] if x["model"] == "tiny"]
    return [f"speed only: {shapes}",
            f"nnU-Net 3d_fullres, {both(lambda key, r: millions(r['models']['teacher']['params']))}, "
            f"{FACTS['deploy_weights']}",
            f"tiny {both(lambda key, r: millions(r['models']['tiny']['params']))} (GFLOPs "
            f"{both(lambda key, r: fraction(*(r['models'][m]['gflops_per_patch'] for m in ('teacher', 'tiny'))))})",
            "–",
            "tiny against the teacher in the same runtime: "
            + "; ".join(f"{FACTS['runtime_names'][runtime]} {same_runtime(runtime)}" for runtime in runtimes)
            + f" ({cpu(json.loads(machine))}, median of {rounds} rounds side by side)",
            f"{link('deploy_ct')}, {link('deploy_head')}"]


def render(root: Path = ROOT) -> str:
    """The block between the markers, without them."""
    frontier, all_labels = load("frontier", root), load("all_labels", root)
    colin27 = load("colin27", root)
    header = ["task", "teacher: parameters, training", "student: parameters (of the teacher's), training",
              "Dice: alone / distilled / teacher", "× faster per case", "source"]
    rows = [*frontier_rows(root), synthetic_row("all_labels", root), synthetic_row("labeled4", root),
            colin27_row(root), deploy_row(root)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [
        "",
        f"*Dice*: mean over the foreground classes; mean ± std over seeds. Synthetic tasks: nnkd_benchmark's "
        f"prediction (no mirroring) of fold 0's {len(frontier['validation_cases'])} (2D) or "
        f"{len(all_labels['validation_cases'])} (3D) validation cases; Colin27: its {len(colin27['test_cases'])} "
        f"test images against the BET labels. *Distilled*: class-balanced logit KD from the cached teacher "
        f"(nnkd's default); on Colin27 the student is trained on deepbet's masks alone (no annotation) and "
        f"*alone* on the BET labels. *Faster*: nnU-Net's whole per-case prediction in torch, teacher ÷ "
        f"distilled student on the same machine (synthetic 3D: on its validation cases, the mean over the seeds' "
        f"students); the speed-only row times networks with random weights (time does not depend on them) without "
        f"mirroring, each runtime's student against the teacher in that runtime, every model and runtime once per "
        f"round (docs/deploy.md's first table).",
    ]
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    start, end = text.index(START) + len(START), text.index(END)
    return text[:start] + "\n" + block + text[end:]


def current_block(text: str) -> str:
    return text[text.index(START) + len(START):text.index(END)].removeprefix("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 and print the difference when README is stale")
    args = parser.parse_args(argv)
    text = README.read_text()
    block = render()
    if args.check:
        if current_block(text) == block:
            return 0
        sys.stdout.writelines(difflib.unified_diff(current_block(text).splitlines(keepends=True),
                                                   block.splitlines(keepends=True), "README.md", "rendered"))
        print("README.md's results table is stale: run python benchmarks/readme_table.py", file=sys.stderr)
        return 1
    README.write_text(replace_block(text, block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
