"""report.md and the plots of a benchmark, from its results.json alone (so a report can be redrawn)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nnkd.evaluation.runtimes import RUNTIME_LABELS  # noqa: E402
from nnkd.method_table import METHOD_TABLE  # noqa: E402

MARKERS = {"none": "o", "logit": "s", "cwd": "v", "feature": "^", "cka": "D", "drd": "P"}


def _method_label(run: dict) -> str:
    if getattr(METHOD_TABLE.get(run["method"]), "teachers", None) == "several":
        return f"multiteacher ({run.get('teachers', 1)} teachers)"
    return run.get("label") or run["method"] + (" (cached)" if run["cached"] else "")


def _mean_std(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{stat['mean']:.3f}" + (f" ± {stat['std']:.3f}" if stat.get("std") is not None else "")


def _difference(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    interval = f" [{stat['ci95'][0]:+.3f}, {stat['ci95'][1]:+.3f}]" if stat.get("ci95") else ""
    return f"{stat['mean']:+.3f}{interval}"


def _found(found: dict | None, iterations: int) -> str:
    if not found:
        return "–"
    return found["median"] if found["median"] is not None else f"> {iterations}"


def summary_lines(results: dict) -> list[str]:
    """The table over seeds: mean ± std, per class, the paired Δ to no KD with its 95 % interval, and the
    iteration at which the median seed's pseudo Dice of each class first reached 0.5."""
    rows = results.get("summary") or []
    if not rows:
        return []
    names = results.get("labels") or {}
    classes = sorted({c for r in rows for c in r["dice_per_class"]}, key=lambda c: int(c) if c.isdigit() else c)
    total = results["schedule"]["epochs"] * results["schedule"]["iterations_per_epoch"]
    header = " | ".join(names.get(c, c) for c in classes)
    lines = ["## Mean over seeds", "",
             f"{results.get('seeds', 1)} seed(s) per run; ± is the standard deviation over seeds; Δ vs no KD is "
             "the mean of the paired differences (same budget and seed) with its 95 % t-interval; 'found at' "
             "is the training iteration after which the class's pseudo Dice (nnU-Net's validation patches) first "
             "reached 0.5, for the median seed.", "",
             f"| budget | method | seeds | Dice | {header} | Δ vs no KD [95 % CI] | found at: {header} |",
             "|---|---|---|---|" + "---|" * len(classes) + "---|" + "---|" * len(classes)]
    for r in rows:
        per_class = " | ".join(_mean_std(r["dice_per_class"].get(c)) for c in classes)
        found = " | ".join(str(_found((r.get("found_at") or {}).get(c), total)) for c in classes)
        lines.append(f"| {r['budget']} | {r['label']} | {len(r['seeds'])} | {_mean_std(r['dice'])} | {per_class} | "
                     f"{_difference(r['dice_vs_none'])} | {found} |")
    reached = [r for r in rows if r.get("reaches_no_kd_final")]
    if reached:
        lines += ["", "**KD as an accelerator.** The level is the no-KD run's final pseudo Dice (mean of the classes "
                  "and the seeds over the last 10 % of epochs); 'reached at' is the first iteration at which each "
                  "method's seed-mean learning curve got there.", "",
                  "| budget | method | final pseudo Dice | no KD's final level | reached at | of the schedule |",
                  "|---|---|---|---|---|---|"]
        for r in reached:
            a = r["reaches_no_kd_final"]
            share = f"{a['iteration'] / a['iterations']:.0%}" if a["iteration"] is not None else "never"
            lines.append(f"| {r['budget']} | {r['label']} | {a['final']:.3f} | {a['level']:.3f} | "
                         f"{_fmt(a['iteration'], '{}')} | {share} |")
    return lines + ["", "![Learning curves](learning_curves.png)", ""]


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
             f"(torch), {_fmt(teacher.get('seconds_per_case_onnx'), '{:.2f}')} s (ONNX Runtime)"
             + (f", {teacher['seconds_per_case_int8']:.2f} s and Dice {_fmt(teacher.get('dice_int8'))} "
                "(ONNX Runtime int8)" if teacher.get("seconds_per_case_int8") else "") + ".", "",
             *summary_lines(results),
             "## Students" + (", every run" if results.get("summary") else ""), "",
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
            f"{_fmt(r['step_vs_none'], '{:.2f}')} | {_fmt(r['peak_memory_mb'], '{:.0f}')} |")
    if any(r.get("seconds_per_case_int8") for r in runs):
        lines += ["", "## Runtimes", "", "Each model's validation Dice and seconds per case in torch fp32, ONNX Runtime "
                  "fp32 and ONNX Runtime int8 (nnkd_export --int8's quantization, calibrated on the fold's training "
                  "cases); × faster is against the teacher in torch.", "",
                  "| run | Dice torch | Dice ORT | Dice int8 | Δ int8 − torch | s/case torch | s/case ORT | "
                  "s/case int8 | × faster int8 |", "|---|---|---|---|---|---|---|---|---|"]
        for r in ([{"run": "teacher", **teacher}] if teacher.get("seconds_per_case_int8") else []) + runs:
            int8_gain = (teacher.get("seconds_per_case_torch") / r["seconds_per_case_int8"]
                         if r.get("seconds_per_case_int8") and teacher.get("seconds_per_case_torch") else None)
            delta = r["dice_int8"] - r["dice"] if r.get("dice_int8") is not None else None
            lines.append(f"| {r['run']} | {_fmt(r.get('dice'))} | {_fmt(r.get('dice_onnx'))} | "
                         f"{_fmt(r.get('dice_int8'))} | {_fmt(delta, '{:+.4f}')} | "
                         f"{_fmt(r.get('seconds_per_case_torch'), '{:.2f}')} | "
                         f"{_fmt(r.get('seconds_per_case_onnx'), '{:.2f}')} | "
                         f"{_fmt(r.get('seconds_per_case_int8'), '{:.2f}')} | {_fmt(int8_gain, '{:.1f}')} |")
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
    if any(r.get("learning_curve") for r in runs):
        plot_learning_curves(runs, results.get("labels") or {}, output / "learning_curves.png")


def plot_learning_curves(runs: list[dict], names: dict, path: Path) -> None:
    """Pseudo Dice per class against training iterations: per method variant the mean over seeds (line)
    and the range of the seeds (band); one panel per class, budgets by line style."""
    runs = [r for r in runs if r.get("learning_curve")]
    count = max(len(r["learning_curve"]["pseudo_dice_per_class"][0]) for r in runs)
    classes = sorted({c for r in runs for c in r["dice_per_class"]}, key=lambda c: int(c) if c.isdigit() else c)
    fig, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.8), squeeze=False, sharey=True)
    labels = list(dict.fromkeys(_method_label(r) for r in runs))
    colors = dict(zip(labels, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    styles = dict(zip(dict.fromkeys(r["budget"] for r in runs), ["-", "--", ":", "-."] * 4))
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["budget"], _method_label(r)), []).append(r)
    for index, ax in enumerate(axes[0]):
        for (budget, label), members in groups.items():
            length = min(len(m["learning_curve"]["iterations"]) for m in members)
            x = members[0]["learning_curve"]["iterations"][:length]
            ys = [[m["learning_curve"]["pseudo_dice_per_class"][e][index] for e in range(length)] for m in members]
            mean = [sum(v) / len(v) for v in zip(*ys)]
            ax.plot(x, mean, styles[budget], color=colors[label], label=f"{budget} {label} (n={len(members)})")
            if len(members) > 1:
                ax.fill_between(x, [min(v) for v in zip(*ys)], [max(v) for v in zip(*ys)], color=colors[label],
                                alpha=0.15)
        name = classes[index] if index < len(classes) else str(index + 1)
        ax.set(title=f"class {names.get(name, name)}", xlabel="training iterations", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pseudo Dice (validation patches)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scatter(ax, teacher: dict, runs: list[dict], key: str, teacher_value, dice_key: str = "dice") -> None:
    budgets = sorted({r["budget"] for r in runs})
    colors = dict(zip(budgets, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r in runs:
        if r.get(key) is None or r.get(dice_key) is None:
            continue
        ax.scatter(r[key], r[dice_key], marker=MARKERS.get(r["method"], "x"), color=colors[r["budget"]],
                   facecolors="none" if r["cached"] else colors[r["budget"]],
                   label=f"{r['budget']} {_method_label(r)}")
    if teacher_value and teacher.get(dice_key) is not None:
        ax.scatter(teacher_value, teacher[dice_key], marker="*", s=200, color="black", label="teacher")
    ax.set_xscale("log")
    ax.set_ylabel("validation Dice")
    ax.grid(alpha=0.3)


def _plots(teacher: dict, runs: list[dict], output: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    _scatter(ax, teacher, runs, "parameters", teacher.get("parameters"))
    ax.set(xlabel="parameters", title="Dice vs size")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(output / "dice_vs_params.png", dpi=120)
    plt.close(fig)

    # Dice vs latency: one panel per runtime measured, each with that runtime's own Dice
    runtimes = [rt for rt in RUNTIME_LABELS if rt == "torch" or any(r.get(f"dice_{rt}") is not None for r in runs)]
    fig, axes = plt.subplots(1, len(runtimes), figsize=(6.5 * len(runtimes) - 0.5 * (len(runtimes) - 1), 4.2),
                             sharey=True, squeeze=False)
    for ax, runtime in zip(axes[0], runtimes):
        key = f"seconds_per_case_{runtime}"
        _scatter(ax, teacher, runs, key, teacher.get(key), "dice" if runtime == "torch" else f"dice_{runtime}")
        ax.set(xlabel=f"seconds per case ({RUNTIME_LABELS[runtime]})", title=f"Dice vs latency, {RUNTIME_LABELS[runtime]}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes[0][-1].legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(output / "dice_vs_latency.png", dpi=120)
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
