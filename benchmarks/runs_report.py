"""Summarise finished nnkd_benchmark runs without measuring them again: validation Dice from each run's own
nnU-Net validation (summary.json; with each class's false positive and false negative voxels per case, which
tell over- from under-segmentation), learning curves from its checkpoint, mean ± std over seeds and when
each class was found; writes results.json, report.md and learning_curves.png to OUT.

    python benchmarks/runs_report.py BENCHMARK_OUTPUT/runs -o OUT [--iterations 20]

For runs trained by `nnkd_benchmark` (or by hand into its folder layout, OUT/runs/<run>/) when there was
no time for the benchmark's own prediction and latency measurements; `nnkd_benchmark` with the same
settings later adds those and reuses the runs.
"""

import argparse
import json
from pathlib import Path

from nnkd.benchmark.report import plot_learning_curves
from nnkd.benchmark.runs import Run, learning_curve
from nnkd.benchmark.stats import derived_ratios, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("-o", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per epoch of the runs")
    args = parser.parse_args()
    records = []
    for run in sorted(p for p in args.runs.iterdir() if p.is_dir()):
        summaries = list(run.glob("*/*/fold_*/validation/summary.json"))
        if not summaries:
            print(f"{run.name}: not finished, left out")
            continue
        fold = summaries[0].parent.parent
        config = json.loads((fold / "teacher.json").read_text())
        validation = json.loads(summaries[0].read_text())
        spec = Run.from_name(run.name)
        records.append({"run": run.name, "label": spec.label, "variant": spec.variant,
                        "budget": spec.budget, "method": config["method"], "cached": spec.cached,
                        "seed": config.get("seed"), "hyperparameters": config["hyperparameters"],
                        "schedule": config["schedule"], "seconds_per_iteration": 1.0,
                        "dice": validation["foreground_mean"]["Dice"],
                        "dice_per_class": {k: v["Dice"] for k, v in validation["mean"].items()},
                        "errors_per_class": {k: {"FP": v["FP"], "FN": v["FN"]} for k, v in validation["mean"].items()},
                        "learning_curve": learning_curve(fold, args.iterations)})
    derived_ratios(records, {})
    for r in records:
        del r["seconds_per_iteration"], r["step_vs_none"]
    rows = summarize(records)
    args.o.mkdir(parents=True, exist_ok=True)
    names = {"1": "organ", "2": "lesion", "3": "vessel"}
    (args.o / "results.json").write_text(json.dumps({"runs": records, "summary": rows}, indent=1))
    lines = ["| budget | run | seed | Dice | organ | lesion | vessel | Δ vs no KD (same budget and seed) | "
             "found at: organ | lesion | vessel | FP / FN voxels per case: organ | lesion | vessel |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        found = {}
        for row in rows:
            if (row["budget"], row["label"]) == (r["budget"], r["label"]):
                found = {c: v["per_seed"][row["seeds"].index(r["seed"])] for c, v in row["found_at"].items()}
        delta = "–" if r["dice_vs_none"] is None else f"{r['dice_vs_none']:+.3f}"
        lines.append(f"| {r['budget']} | {r['label']} | {r['seed']} | {r['dice']:.3f} | " +
                     " | ".join(f"{r['dice_per_class'][c]:.3f}" for c in sorted(r["dice_per_class"])) +
                     f" | {delta} | " + " | ".join(str(found.get(c) or "never") for c in sorted(found)) + " | " +
                     " | ".join(f"{e['FP']:.0f} / {e['FN']:.0f}" for _, e in sorted(r["errors_per_class"].items())) +
                     " |")
    (args.o / "report.md").write_text("\n".join(lines) + "\n\n![Learning curves](learning_curves.png)\n")
    plot_learning_curves(records, names, args.o / "learning_curves.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
