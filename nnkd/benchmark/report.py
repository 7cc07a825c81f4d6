"""report.md and the plots of a benchmark, from its results.json alone (so a report can be redrawn)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = {"none": "o", "logit": "s", "feature": "^", "cka": "D", "drd": "P"}


def _method_label(run: dict) -> str:
    if run["method"] == "multiteacher":
        return f"multiteacher ({run.get('teachers', 1)} teachers)"
    return run["method"] + (" (cached)" if run["cached"] else "")


def _fmt(value, pattern: str = "{:.3f}") -> str:
    return "–" if value is None else pattern.format(value)


def write_report(results: dict, output: Path) -> None:
    teacher, runs = results["teacher"], results["runs"]
    labeled = f", {results['labeled']} labelled training cases" if results.get("labeled") else ""
    lines = [f"# nnkd benchmark: {results['dataset']} {results['configuration']}, fold {results['fold']}{labeled}",
             "", f"Machine: {results['machine']}. Schedule per run: {results['schedule']['epochs']} epochs × "
             f"{results['schedule']['iterations_per_epoch']} iterations. Validation cases: "
             f"{len(results['validation_cases'])}; Dice is nnU-Net's evaluation of whole-case predictions "
             "(no mirroring); latency is nnU-Net's per-case prediction, median after a warm-up case.", "",
             "## Teacher", "",
             f"`{teacher['spec']}`: {teacher['parameters'] / 1e6:.2f} M parameters, "
             f"{_fmt(teacher.get('gflops_per_patch'), '{:.1f}')} GFLOPs per patch, Dice "
             f"{_fmt(teacher.get('dice'))}, {_fmt(teacher.get('seconds_per_case_torch'), '{:.2f}')} s per case "
             f"(torch), {_fmt(teacher.get('seconds_per_case_onnx'), '{:.2f}')} s (ONNX Runtime).", "",
             "## Students", "",
             "| budget | method | params | × smaller | GFLOPs/patch | Dice | Δ vs no KD | Δ vs teacher | s/case torch "
             "| × faster | s/case ORT | × faster | s/iteration | × no-KD step | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        smaller = 1 / r["param_ratio"] if r.get("param_ratio") else None
        lines.append(
            f"| {r['budget']} | {_method_label(r)} | "
            f"{_fmt(r.get('parameters') and r['parameters'] / 1e6, '{:.3f} M')} | {_fmt(smaller, '{:.1f}')} | "
            f"{_fmt(r.get('gflops_per_patch'), '{:.2f}')} | {_fmt(r['dice'])} | {_fmt(r['dice_vs_none'], '{:+.3f}')} | "
            f"{_fmt(r['dice_vs_teacher'], '{:+.3f}')} | {_fmt(r.get('seconds_per_case_torch'), '{:.2f}')} | "
            f"{_fmt(r.get('speedup_torch'), '{:.1f}')} | {_fmt(r.get('seconds_per_case_onnx'), '{:.2f}')} | "
            f"{_fmt(r.get('speedup_onnx'), '{:.1f}')} | {r['seconds_per_iteration']:.2f} | "
            f"{_fmt(r['step_vs_none'], '{:.2f}')} | {r['peak_memory_mb']:.0f} |")
    classes = sorted({c for r in runs for c in r["dice_per_class"]})
    lines += ["", "## Dice per class", "", "| run | " + " | ".join(classes) + " |",
              "|---|" + "---|" * len(classes)]
    if teacher.get("dice_per_class"):
        lines.append("| teacher | " + " | ".join(_fmt(teacher["dice_per_class"].get(c)) for c in classes) + " |")
    lines += [f"| {r['run']} | " + " | ".join(_fmt(r["dice_per_class"].get(c)) for c in classes) + " |" for r in runs]
    lines += ["", "![Dice vs parameters](dice_vs_params.png)", "", "![Dice vs latency](dice_vs_latency.png)", "",
              "![Dice per method](dice_per_method.png)", ""]
    (output / "report.md").write_text("\n".join(lines))
    _plots(teacher, runs, output)


def _scatter(ax, teacher: dict, runs: list[dict], key: str, teacher_value) -> None:
    budgets = sorted({r["budget"] for r in runs})
    colors = dict(zip(budgets, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r in runs:
        if r.get(key) is None:
            continue
        ax.scatter(r[key], r["dice"], marker=MARKERS.get(r["method"], "x"), color=colors[r["budget"]],
                   facecolors="none" if r["cached"] else colors[r["budget"]],
                   label=f"{r['budget']} {_method_label(r)}")
    if teacher_value and teacher.get("dice") is not None:
        ax.scatter(teacher_value, teacher["dice"], marker="*", s=200, color="black", label="teacher")
    ax.set_xscale("log")
    ax.set_ylabel("validation Dice")
    ax.grid(alpha=0.3)


def _plots(teacher: dict, runs: list[dict], output: Path) -> None:
    for key, xlabel, title, name in (("parameters", "parameters", "Dice vs size", "dice_vs_params.png"),
                                     ("seconds_per_case_torch", "seconds per case (CPU, torch)", "Dice vs latency",
                                      "dice_vs_latency.png")):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        _scatter(ax, teacher, runs, key, teacher.get(key))
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(output / name, dpi=120)
        plt.close(fig)

    methods = list(dict.fromkeys(_method_label(r) for r in runs))
    budgets = list(dict.fromkeys(r["budget"] for r in runs))
    width = 0.8 / max(1, len(budgets))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(methods)), 4.2))
    for b, budget in enumerate(budgets):
        values = {_method_label(r): r["dice"] for r in runs if r["budget"] == budget}
        ax.bar([i + b * width for i in range(len(methods))], [values.get(m, 0) for m in methods], width,
               label=budget)
    if teacher.get("dice") is not None:
        ax.axhline(teacher["dice"], color="black", linestyle="--", label="teacher")
    ax.set_xticks([i + width * (len(budgets) - 1) / 2 for i in range(len(methods))], methods, rotation=20)
    ax.set_ylabel("validation Dice")
    ax.set_title("Dice per method")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "dice_per_method.png", dpi=120)
    plt.close(fig)
