"""A benchmark's numbers across runs: ratios to the teacher and to the no-KD run, and means over seeds with
the paired difference to no KD and its 95 % interval."""

import math
import statistics

from nnkd.evaluation.runtimes import RUNTIMES
from nnkd.method_table import BASELINE

FOUND_AT = 0.5  # a class counts as found once its pseudo Dice reaches this


def derived_ratios(records: list[dict], teacher: dict) -> list[dict]:
    """Each run against the teacher and against the no-KD run of its budget and seed."""
    plain = {(r["budget"], r.get("seed", 0)): r for r in records if r.get("variant", r["method"]) == BASELINE}
    for r in records:
        base = plain.get((r["budget"], r.get("seed", 0)))
        r["step_vs_none"] = r["seconds_per_iteration"] / base["seconds_per_iteration"] if base else None
        r["dice_vs_none"] = r["dice"] - base["dice"] if base else None
        r["dice_vs_none_per_class"] = {c: v - base["dice_per_class"][c] for c, v in r["dice_per_class"].items()
                                       if c in base["dice_per_class"]} if base else None
        r["dice_vs_teacher"] = r["dice"] - teacher["dice"] if "dice" in teacher else None
        r["param_ratio"] = r["parameters"] / teacher["parameters"] if r.get("parameters") else None
        for runtime in RUNTIMES:
            mine, theirs = r.get(f"seconds_per_case_{runtime}"), teacher.get(f"seconds_per_case_{runtime}")
            r[f"speedup_{runtime}"] = theirs / mine if mine and theirs else None
    return records


def mean_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean, sample standard deviation and the Student-t interval of the mean (None below two values)."""
    n = len(values)
    mean = statistics.fmean(values) if values else None
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None}
    from scipy.stats import t

    std = statistics.stdev(values)
    half = t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def found_at(curve: dict, class_index: int, threshold: float = FOUND_AT) -> int | None:
    """The first training iteration after which the class's pseudo Dice reached `threshold` (None: never)."""
    for iteration, values in zip(curve["iterations"], curve["pseudo_dice_per_class"]):
        if class_index < len(values) and values[class_index] >= threshold:
            return iteration
    return None


FINAL_SHARE = 0.1  # a run's final pseudo Dice: the mean over its last 10 % of epochs (at least one)


def mean_curve(curves: list[dict]) -> tuple[list[int], list[float]]:
    """Training iterations and, per epoch, the mean over seeds of the pseudo Dice averaged over classes
    (over the epochs every seed has)."""
    epochs = min(len(c["iterations"]) for c in curves)
    values = [statistics.fmean(statistics.fmean(c["pseudo_dice_per_class"][e]) for c in curves)
              for e in range(epochs)]
    return list(curves[0]["iterations"][:epochs]), values


def final_level(values: list[float], share: float = FINAL_SHARE) -> float:
    return statistics.fmean(values[-max(1, round(len(values) * share)):])


def first_reaching(iterations: list[int], values: list[float], level: float) -> int | None:
    """The first training iteration at which `values` reached `level` (None: never)."""
    return next((i for i, v in zip(iterations, values) if v >= level), None)


def _accelerator(rows: list[dict], groups: dict) -> None:
    """KD as an accelerator: per row, the iteration at which its seed-mean learning curve first reached the
    final pseudo Dice of the no-KD row of its budget (the same level for every row, no KD included)."""
    for budget in {r["budget"] for r in rows}:
        plain = next((g for (b, label), g in groups.items() if b == budget and g[0]["method"] == BASELINE
                      and all(r.get("learning_curve") for r in g)), None)
        if plain is None:
            continue
        level = final_level(mean_curve([r["learning_curve"] for r in plain])[1])
        for row in rows:
            members = groups[(row["budget"], row["label"])]
            if row["budget"] == budget and all(r.get("learning_curve") for r in members):
                iterations, values = mean_curve([r["learning_curve"] for r in members])
                row["reaches_no_kd_final"] = {"level": level, "iteration": first_reaching(iterations, values, level),
                                              "final": final_level(values), "iterations": iterations[-1]}


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (budget, method variant, cached): Dice over the seeds, per class, the paired difference to
    the no-KD run of the same seed with its 95 % interval, and when each class was found (median seed)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["budget"], r.get("label", r["method"])), []).append(r)
    rows = []
    for (budget, label), members in groups.items():
        classes = sorted(members[0]["dice_per_class"], key=lambda c: int(c) if c.isdigit() else c)
        row = {"budget": budget, "label": label, "method": members[0]["method"], "cached": members[0]["cached"],
               "seeds": sorted(r.get("seed", 0) for r in members),
               "dice": mean_interval([r["dice"] for r in members]),
               "dice_per_class": {c: mean_interval([r["dice_per_class"][c] for r in members]) for c in classes},
               "dice_vs_none": mean_interval([r["dice_vs_none"] for r in members if r.get("dice_vs_none") is not None]),
               "dice_vs_none_per_class": {c: mean_interval([r["dice_vs_none_per_class"][c] for r in members
                                                            if c in (r.get("dice_vs_none_per_class") or {})])
                                          for c in classes}}
        curves = [r["learning_curve"] for r in members if r.get("learning_curve")]
        if curves:
            found = {}
            for index, name in enumerate(classes):
                at = [found_at(c, index) for c in curves]
                found[name] = {"per_seed": at, "median": _median_or_never(at)}
            row["found_at"] = found
        rows.append(row)
    _accelerator(rows, groups)
    return rows


def _median_or_never(values: list[int | None]) -> int | None:
    """The median iteration, counting a never-found seed as later than any (None when most never found it)."""
    ordered = sorted(values, key=lambda v: math.inf if v is None else v)
    middle = ordered[(len(ordered) - 1) // 2]
    return middle
