"""What the budget search chooses on the synthetic dataset: a markdown table and a plot for docs/planning.md.

    python benchmarks/plan_budgets.py [--out docs] [--teacher-plans nnUNetPlans]

Works in a temporary nnU-Net tree (the synthetic dataset at its default size, planned without
preprocessing), so it never touches your own nnUNet_* folders.
"""

import argparse
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
from tqdm import tqdm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--teacher-plans", default="nnUNetPlans")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.environ[name] = str(Path(tmp) / name)
        from nnkd.datasets.synthetic import SyntheticSpec, write_synthetic_dataset
        from nnkd.planners.budget import PRESETS, Budget
        from nnkd.planners.plan_and_preprocess import plan_and_preprocess

        write_synthetic_dataset(SyntheticSpec(990), Path(os.environ["nnUNet_raw"]))
        rows = []
        for preset in tqdm(PRESETS, desc="budgets"):
            _, planned = plan_and_preprocess(990, Budget(preset=preset), teacher_plans=args.teacher_plans,
                                             num_processes=2, preprocess=False)
            rows += [(preset, p) for p in planned]

    lines = ["| configuration | budget | params | params ratio | GFLOPs/patch | GFLOPs ratio | widths | "
             "encoder depth | decoder depth |", "|---|---|---|---|---|---|---|---|---|"]
    teachers = {}
    for preset, p in sorted(rows, key=lambda r: (r[1].name, r[1].student.cost.params)):
        teachers[p.name] = p.teacher
        s = p.student
        lines.append(f"| {p.name} | {preset} | {s.cost.params / 1e6:.3f} M | {s.cost.params / p.teacher.params:.3f} | "
                     f"{s.cost.gflops:.2f} | {s.cost.gflops / p.teacher.gflops:.3f} | "
                     f"{list(s.architecture['arch_kwargs']['features_per_stage'])} | {list(s.encoder_depth)} | "
                     f"{list(s.decoder_depth)} |")
    for name, t in sorted(teachers.items()):
        lines.append(f"| {name} | teacher ({args.teacher_plans}) | {t.params / 1e6:.3f} M | 1 | {t.gflops:.2f} | 1 | "
                     f"| | |")
    table = "\n".join(lines)
    print(table)

    fig, axes = plt.subplots(1, len(teachers), figsize=(5 * len(teachers), 4), squeeze=False)
    for ax, (name, teacher) in zip(axes[0], sorted(teachers.items())):
        ax.scatter([teacher.params / 1e6], [teacher.gflops], marker="*", s=200, color="black", label="teacher")
        for preset, p in rows:
            if p.name == name:
                ax.scatter([p.student.cost.params / 1e6], [p.student.cost.gflops], s=60, label=f"{preset} student")
                ax.scatter([p.param_limit / 1e6], [p.gflop_limit], marker="+", color="grey")
        ax.set(xscale="log", yscale="log", xlabel="parameters (M)", ylabel="GFLOPs per patch",
               title=f"{name}: students vs teacher (+ = budget limit)")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "planning_budgets.png", dpi=100)
    print(f"plot: {args.out / 'planning_budgets.png'}")


if __name__ == "__main__":
    main()
