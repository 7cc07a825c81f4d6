"""The accuracy–size frontier: students of shrinking budgets, alone and distilled, against a converged teacher.

`frontier(results, teacher)` turns an nnkd_benchmark results.json (runs over budgets, methods and seeds) and
the teacher's record into the answers users choose a student by: per budget the mean Dice of each method,
the paired KD − no-KD difference with its 95 % interval (overall and per class), the share of no KD's loss to
the teacher that KD closes, and the smallest student of each method within D points of the teacher.
`write_frontier` writes results.json, report.md and the two frontier plots.
"""

import math
from pathlib import Path

from nnkd.atomic import write_json_atomic
from nnkd.benchmark.report import MARKERS, _difference, _mean_std
from nnkd.method_table import BASELINE, DEFAULT_METHOD

GAP_POINTS = 3.0  # a budget "has a gap" when no KD is at least this many Dice points below the teacher
WITHIN_POINTS = (1.0, 3.0)  # the "smallest student within D points of the teacher" answers
BEST_MARGIN = 0.005  # the default method should be the best, or within 0.5 points of the best, everywhere


def _rows(runs: list[dict], summary: list[dict]) -> list[dict]:
    """One row per (budget, method label) from the benchmark's summary, with the budget's student size."""
    sizes = {}
    for r in runs:
        sizes.setdefault(r["budget"], (r.get("parameters"), r.get("gflops_per_patch")))
    rows = []
    for s in summary:
        params, gflops = sizes.get(s["budget"], (None, None))
        rows.append({"budget": s["budget"], "label": s["label"], "method": s["method"], "cached": s["cached"],
                     "seeds": s["seeds"], "parameters": params, "gflops_per_patch": gflops, "dice": s["dice"],
                     "dice_per_class": s["dice_per_class"], "dice_vs_none": s["dice_vs_none"],
                     "dice_vs_none_per_class": s.get("dice_vs_none_per_class")})
    return sorted(rows, key=lambda r: (-(r["parameters"] or 0), r["label"]))


def _closure(row: dict, none: dict | None, teacher_dice: float) -> dict | None:
    """The share of no KD's loss to the teacher that this row closes: Δ / (teacher − no KD), with the Δ
    interval divided by the same loss (the teacher is one fixed model; the loss is no KD's seed mean)."""
    if none is None or row is none or row["dice_vs_none"].get("mean") is None:
        return None
    loss = teacher_dice - none["dice"]["mean"]
    if loss <= 0:
        return {"loss_points": 100 * loss, "share": None, "ci95": None}
    delta = row["dice_vs_none"]
    return {"loss_points": 100 * loss, "share": delta["mean"] / loss,
            "ci95": [v / loss for v in delta["ci95"]] if delta.get("ci95") else None}


def _smallest_within(rows: list[dict], label: str, teacher_dice: float, points: float) -> dict | None:
    """The smallest budget (fewest parameters) whose mean Dice for `label` is within `points` of the teacher."""
    fits = [r for r in rows if r["label"] == label and r["dice"]["mean"] >= teacher_dice - points / 100]
    if not fits:
        return None
    best = min(fits, key=lambda r: r["parameters"] or math.inf)
    return {"budget": best["budget"], "parameters": best["parameters"], "dice": best["dice"]["mean"]}


def frontier(results: dict, teacher: dict) -> dict:
    """The frontier rows and answers of a benchmark's results (see the module doc). `teacher` needs `dice`
    (its mean foreground Dice on the same validation cases, measured the same way)."""
    rows = _rows(results["runs"], results["summary"])
    teacher_dice = teacher["dice"]
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    none_label = next((r["label"] for r in rows if r["method"] == BASELINE), None)
    default_label = next((r["label"] for r in rows if r["method"] == DEFAULT_METHOD), None)
    per_budget = []
    for budget in budgets:
        members = {r["label"]: r for r in rows if r["budget"] == budget}
        none = members.get(none_label)
        for row in members.values():
            row["dice_vs_teacher_points"] = 100 * (row["dice"]["mean"] - teacher_dice)
            row["closes"] = _closure(row, none, teacher_dice)
        best = max(members.values(), key=lambda r: r["dice"]["mean"])
        default = members.get(default_label)
        kd = [r for r in members.values() if r["method"] != BASELINE]
        best_kd = max(kd, key=lambda r: r["dice"]["mean"]) if kd else None
        per_budget.append({
            "budget": budget, "parameters": best["parameters"], "gflops_per_patch": best["gflops_per_patch"],
            "no_kd_loss_points": 100 * (teacher_dice - none["dice"]["mean"]) if none else None,
            "has_gap": bool(none and 100 * (teacher_dice - none["dice"]["mean"]) >= GAP_POINTS),
            "best": best["label"], "best_kd": best_kd["label"] if best_kd else None,
            "best_kd_closes": best_kd["closes"] if best_kd else None,
            "default_within_best": (default is not None and
                                    default["dice"]["mean"] >= best["dice"]["mean"] - BEST_MARGIN),
        })
    within = {}
    for points in WITHIN_POINTS:
        answer = {label: _smallest_within(rows, label, teacher_dice, points) for label in labels}
        kd, alone = answer.get(default_label), answer.get(none_label)
        answer["size_ratio_default_vs_none"] = (alone["parameters"] / kd["parameters"]
                                                if kd and alone and kd["parameters"] else None)
        within[f"{points:g}"] = answer
    return {"teacher_dice": teacher_dice, "rows": rows, "budgets": per_budget, "smallest_within_points": within,
            "default_method": default_label, "no_kd": none_label}


def plot_frontier(result: dict, teacher: dict, folder: Path) -> list[Path]:
    """Dice against parameters and against GFLOPs per patch (log axes), mean ± std over seeds per method,
    the teacher as a line: frontier_params.png and frontier_gflops.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, xlabel, name in (("parameters", "student parameters", "frontier_params.png"),
                              ("gflops_per_patch", "student GFLOPs per patch", "frontier_gflops.png")):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for label in dict.fromkeys(r["label"] for r in result["rows"]):
            members = sorted((r for r in result["rows"] if r["label"] == label and r[key]), key=lambda r: r[key])
            if not members:
                continue
            ax.errorbar([r[key] for r in members], [r["dice"]["mean"] for r in members],
                        yerr=[r["dice"]["std"] or 0 for r in members], capsize=3, label=label,
                        marker=MARKERS.get(members[0]["method"], "o"))
        ax.axhline(result["teacher_dice"], color="black", linestyle="--",
                   label=f"teacher ({teacher.get(key) or '?':,} {'params' if key == 'parameters' else 'GFLOPs'})"
                   if isinstance(teacher.get(key), int) else "teacher")
        ax.set(xscale="log", xlabel=xlabel, ylabel="mean foreground Dice (validation cases)",
               title="accuracy–size frontier")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        written.append(folder / name)
    return written


def plot_teacher_curve(curve: dict, plateau: dict, iterations_per_epoch: int, path: Path) -> None:
    """The teacher's EMA and raw pseudo Dice against training iterations, the plateau window shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [(e + 1) * iterations_per_epoch for e in range(len(curve["ema_fg_dice"]))]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(x, curve["mean_fg_dice"], alpha=0.35, label="pseudo Dice (validation patches)")
    ax.plot(x, curve["ema_fg_dice"], label="EMA pseudo Dice")
    if plateau["window"] < len(x):
        ax.axvspan(x[-plateau["window"] - 1], x[-1], color="grey", alpha=0.15,
                   label=f"plateau window: gain {100 * plateau['gain']:.2f} points")
    ax.set(xlabel="training iterations", ylabel="Dice", title="teacher learning curve", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_lines(study: dict) -> list[str]:
    """report.md of a frontier study."""
    teacher, answer = study["teacher"], study["frontier"]
    names = study.get("labels") or {}
    lines = [f"# Accuracy–size frontier: {study['dataset']} ({study['configuration']})", "",
             f"Teacher: `{teacher['spec']}`, {teacher.get('parameters') or '?':,} parameters, trained "
             f"{teacher['iterations']:,} iterations (seed {teacher.get('seed')}); validation Dice "
             f"{teacher['dice']:.4f}. Convergence: {teacher['plateau']['criterion']}: gain "
             f"{100 * teacher['plateau']['gain']:.2f} points → {'converged' if teacher['plateau']['converged'] else 'NOT converged'}.",
             f"Students: {study['students_schedule']['iterations']:,} iterations each "
             f"({study['students_schedule']['epochs']} × {study['students_schedule']['iterations_per_epoch']}), "
             f"seeds {study['seeds']}; validation cases: {len(study['validation_cases'])} (fold {study['fold']}). "
             f"Machine: {study['machine']}.", "",
             "| budget | params | GFLOPs/patch | method | Dice (mean ± std) | vs teacher (points) | "
             "Δ vs no KD [95 % CI] | closes of no KD's loss |", "|---|---|---|---|---|---|---|---|"]
    fractions = study.get("budget_fractions") or {}

    def budget(name: str) -> str:  # "1/16 (params1289315)" where the study names its fractions
        return f"1/{round(1 / fractions[name])} ({name})" if fractions.get(name) else name

    for r in answer["rows"]:
        closes = r.get("closes") or {}
        share = f"{closes['share']:.0%}" if closes.get("share") is not None else "–"
        if closes.get("ci95"):
            share += f" [{closes['ci95'][0]:.0%}, {closes['ci95'][1]:.0%}]"
        lines.append(f"| {budget(r['budget'])} | {r['parameters'] or '?':,} | {r['gflops_per_patch'] or '?'} | {r['label']} | "
                     f"{_mean_std(r['dice'])} | {r['dice_vs_teacher_points']:+.2f} | {_difference(r['dice_vs_none'])} | "
                     f"{share} |")
    lines += ["", "## Per class: Δ vs no KD of the default method [95 % CI]", ""]
    classes = sorted({c for r in answer["rows"] for c in r["dice_per_class"]}, key=lambda c: int(c) if c.isdigit() else c)
    lines += ["| budget | " + " | ".join(names.get(c, c) for c in classes) + " |", "|---|" + "---|" * len(classes)]
    for r in answer["rows"]:
        if r["label"] == answer["default_method"]:
            per = r.get("dice_vs_none_per_class") or {}
            lines.append(f"| {budget(r['budget'])} | " + " | ".join(_difference(per.get(c)) for c in classes) + " |")
    lines += ["", "## Answers", ""]
    for b in answer["budgets"]:
        lines.append(f"- {budget(b['budget'])}: no KD {b['no_kd_loss_points']:.2f} points below the teacher"
                     f"{' (a gap ≥ 3 points)' if b['has_gap'] else ''}; best {b['best']}; default method within "
                     f"0.5 points of the best: {'yes' if b['default_within_best'] else 'no'}.")
    for points, answers in answer["smallest_within_points"].items():
        parts = [f"{label}: {budget(a['budget'])}, {a['parameters']:,} params" if a else f"{label}: none"
                 for label, a in answers.items() if label != "size_ratio_default_vs_none"]
        ratio = answers["size_ratio_default_vs_none"]
        lines.append(f"- Smallest student within {points} point(s) of the teacher — " + "; ".join(parts)
                     + (f"; the default KD student is {ratio:.1f}× smaller than no KD's" if ratio else ""))
    lines += ["", "![Dice vs parameters](frontier_params.png)", "", "![Dice vs GFLOPs](frontier_gflops.png)", "",
              "![Teacher learning curve](teacher_curve.png)", ""]
    return lines


def write_frontier(study: dict, folder: Path) -> None:
    """results.json, report.md and the plots of a frontier study (`study` holds the teacher, the runs and the
    frontier answers)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "results.json", study)
    plot_frontier(study["frontier"], study["teacher"], folder)
    (folder / "report.md").write_text("\n".join(report_lines(study)) + "\n")
