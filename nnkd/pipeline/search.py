"""The search behind `nnkd_distill --max-dice-loss D`: the smallest (or fastest) student within D Dice points of
its teacher, found by successive halving over a ladder of budgets.

Candidates are sorted from the smallest to the largest. Every candidate trains on the same schedule as a
single student would (the same epochs, so the same learning-rate curve); the search only decides how far each
goes:

1. The first rung, side by side: every candidate trains to the first rung (1/8 of the schedule). One whose EMA
   pseudo Dice (nnU-Net's validation patches) lies more than D + slack points below the teacher's own curve at
   the same iteration (where the teacher was trained by nnU-Net and its curve is known) or below the leading
   candidate (never above it, so the leader goes on) is dropped: it is not on course to end within D.
2. Then one candidate at a time, from the smallest: it trains on rung by rung (1/2, then the end of the
   schedule) and is dropped at a rung when it lies more than D + slack below the teacher's curve (the slack
   halves from rung to rung: students catch up late; the largest candidate left always finishes, so the best
   one is known). The first whose validation Dice is within D of the teacher's on the same fold is the answer;
   the larger ones are not trained past the first rung: the answer is known.

`run_search` takes a `train(candidate, epochs) -> Progress` callback, so the logic is tested without training;
nnkd_distill passes one that resumes nnkd_train up to the given epoch.
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from nnkd.errors import NnkdError
from nnkd.planners.budget import Budget

OBJECTIVES = ("params", "gflops", "latency")
LADDER_FRACTIONS = (4, 8, 16, 32, 64, 128, 256)  # 1/N of the teacher's parameters, GFLOPs or latency
RUNGS = (0.125, 0.5)  # fractions of the schedule after which candidates may be dropped (the end is 1.0)
SLACK_POINTS = 10.0  # at the first rung; halved at every later rung


@dataclass(frozen=True)
class Candidate:
    budget: Budget
    parameters: int | None = None
    gflops_per_patch: float | None = None
    latency_ms: float | None = None

    def size(self, objective: str) -> float:
        value = {"params": self.parameters, "gflops": self.gflops_per_patch, "latency": self.latency_ms}[objective]
        return float("inf") if value is None else value


@dataclass
class Progress:
    """What a candidate's training reports after reaching an epoch: its EMA pseudo Dice per epoch so far, its
    validation Dice once it has finished the schedule, and the seconds it spent per iteration."""
    ema: list[float]
    dice: float | None = None
    seconds_per_iteration: float | None = None


@dataclass
class Entry:
    """One candidate in the search record (distill.json's `candidates`)."""
    budget: str
    parameters: int | None
    gflops_per_patch: float | None
    latency_ms: float | None
    epochs_trained: int = 0
    ema_pseudo_dice: float | None = None
    dice: float | None = None
    status: str = "waiting"  # waiting, dropped, within, outside, not needed
    reason: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    chosen: str | None
    teacher_dice: float
    max_dice_loss: float
    entries: list[Entry] = field(default_factory=list)
    epochs: int = 0
    iterations_per_epoch: int = 0

    @property
    def search_seconds(self) -> float:
        return sum(e.seconds for e in self.entries)

    def cost_vs_chosen(self) -> float | None:
        """The search's training time over what the chosen student alone costs (its own full schedule)."""
        chosen = next((e for e in self.entries if e.budget == self.chosen), None)
        if chosen is None or not chosen.seconds:
            return None
        return self.search_seconds / chosen.seconds

    def to_json(self) -> dict:
        return {"chosen": self.chosen, "teacher_dice": self.teacher_dice, "max_dice_loss": self.max_dice_loss,
                "epochs": self.epochs, "iterations_per_epoch": self.iterations_per_epoch,
                "search_seconds": self.search_seconds, "cost_vs_chosen_alone": self.cost_vs_chosen(),
                "candidates": [e.to_json() for e in self.entries]}


def ladder(objective: str, teacher_params: int | None = None, teacher_gflops: float | None = None,
           teacher_latency_ms: float | None = None, fractions: tuple[int, ...] = LADDER_FRACTIONS,
           latency_device: str = "cpu") -> list[Budget]:
    """The candidate budgets, 1/N of the teacher for each N of `fractions`: of its parameters (`params`; an
    absolute --max-params limit, so the smallest fractions stay plannable however the GFLOPs fall), of its
    GFLOPs per patch (`gflops`), or of its measured patch latency (`latency`, on `latency_device` as nnkd_predict
    runs there: the teacher's latency must be measured the same way)."""
    if objective not in OBJECTIVES:
        raise NnkdError(f"--objective {objective} is unknown", f"use one of {', '.join(OBJECTIVES)}")
    if not fractions or any(n < 2 for n in fractions):
        raise NnkdError(f"--ladder {', '.join(f'1/{n}' for n in fractions)} is not a ladder of fractions below 1",
                        "give fractions like 1/4,1/16,1/64")
    teacher = {"params": teacher_params, "gflops": teacher_gflops, "latency": teacher_latency_ms}[objective]
    if not teacher or teacher <= 0:
        raise NnkdError(f"--objective {objective} needs the teacher's {objective}", "plan the teacher first")
    if objective == "params":
        return [Budget(max_params=int(teacher / n)) for n in sorted(set(fractions))]
    if objective == "gflops":
        return [Budget(max_gflops=round(teacher / n, 6)) for n in sorted(set(fractions))]
    return [Budget(max_latency_ms=round(teacher / n, 3), latency_device=latency_device) for n in sorted(set(fractions))]


def parse_ladder(text: str) -> tuple[int, ...]:
    """`1/4,1/16,1/64` → (4, 16, 64)."""
    fractions = []
    for part in filter(None, text.split(",")):
        head, _, tail = part.strip().partition("/")
        if head != "1" or not tail.isdigit() or int(tail) < 2:
            raise NnkdError(f"--ladder {text}: '{part}' is not a fraction 1/N with N ≥ 2",
                            "e.g. --ladder 1/4,1/16,1/64")
        fractions.append(int(tail))
    if not fractions:
        raise NnkdError(f"--ladder '{text}' names no fraction", "e.g. --ladder 1/4,1/16,1/64")
    return tuple(fractions)


def _reference(teacher_ema: list[float] | None, leader: float, epoch: int) -> float:
    """The level a candidate is compared with at a rung: the teacher's own EMA pseudo Dice at that epoch when
    its curve is known, but never above the leading candidate's (so the leader always goes on)."""
    return min(_teacher_at(teacher_ema, epoch), leader) if teacher_ema else leader


def _teacher_at(teacher_ema: list[float], epoch: int) -> float:
    """The teacher's EMA pseudo Dice after `epoch` epochs (its last value past the end of its curve)."""
    return teacher_ema[min(epoch, len(teacher_ema)) - 1]


def check_max_dice_loss(value: float) -> None:
    if not (math.isfinite(value) and 0 < value <= 100):
        raise NnkdError(f"--max-dice-loss {value} is not a number of Dice points in (0, 100]",
                        "give the loss you accept, e.g. --max-dice-loss 1.0")


def run_search(candidates: list[Candidate], train: Callable[[Candidate, int], Progress], *, teacher_dice: float,
               max_dice_loss: float, epochs: int, iterations_per_epoch: int, objective: str = "params",
               teacher_ema: list[float] | None = None, rungs: tuple[float, ...] = RUNGS,
               slack_points: float = SLACK_POINTS) -> SearchResult:
    """Successive halving over `candidates` (see the module doc). `train(candidate, epoch)` trains a candidate
    on until `epoch` (of `epochs`) and reports its Progress; Dice values are fractions, `max_dice_loss` and
    `slack_points` Dice points."""
    check_max_dice_loss(max_dice_loss)
    if not candidates:
        raise NnkdError("no candidate student to search", "check the budgets")
    ordered = sorted(candidates, key=lambda c: c.size(objective))
    entries = {id(c): Entry(c.budget.name, c.parameters, c.gflops_per_patch, c.latency_ms) for c in ordered}
    result = SearchResult(None, teacher_dice, max_dice_loss, [entries[id(c)] for c in ordered], epochs,
                          iterations_per_epoch)
    target = teacher_dice - max_dice_loss / 100

    def advance(candidate: Candidate, epoch: int) -> Progress:
        entry = entries[id(candidate)]
        progress = train(candidate, epoch)
        trained = epoch - entry.epochs_trained
        entry.seconds += trained * iterations_per_epoch * (progress.seconds_per_iteration or 0.0)
        entry.epochs_trained = epoch
        entry.ema_pseudo_dice = progress.ema[-1] if progress.ema else None
        return progress

    later = [e for e in dict.fromkeys(max(1, round(epochs * f)) for f in rungs) if e < epochs]
    first = later.pop(0) if later else None
    alive = list(ordered)
    if first is not None:  # every candidate to the first rung, side by side: a cheap look at all of them
        levels = {id(c): _level(advance(c, first)) for c in alive}
        reference = _reference(teacher_ema, max(levels.values()), first)
        alive = [c for c in alive if not _dropped(entries[id(c)], levels[id(c)], reference,
                                                   first * iterations_per_epoch, max_dice_loss, slack_points)]
    for candidate in alive:  # then one at a time, smallest first, only until the answer is known
        entry = entries[id(candidate)]
        slack = slack_points
        for epoch in later if result.chosen is None else ():
            slack /= 2
            level = _level(advance(candidate, epoch))
            # against the teacher's curve alone (the larger candidates have not trained this far); the largest
            # candidate left always finishes, so that the best one found is known
            if teacher_ema and candidate is not alive[-1] and _dropped(
                    entry, level, _teacher_at(teacher_ema, epoch), epoch * iterations_per_epoch,
                    max_dice_loss, slack):
                break
        else:
            _finish(entry, lambda: advance(candidate, epochs), result, target)
    return result


def _level(progress: Progress) -> float:
    return progress.ema[-1] if progress.ema else 0.0


def _dropped(entry: Entry, level: float, reference: float, iteration: int, max_dice_loss: float,
             slack: float) -> bool:
    """Drop a candidate whose EMA pseudo Dice is more than D + slack points below `reference` at `iteration`."""
    behind = 100 * (reference - level)
    if behind <= max_dice_loss + slack:
        return False
    entry.status = "dropped"
    entry.reason = (f"at iteration {iteration}: EMA pseudo Dice {level:.3f}, {behind:.1f} points behind "
                    f"{reference:.3f} (the teacher's curve or the leading candidate; more than {max_dice_loss:g} + "
                    f"{slack:g} slack)")
    return True


def _finish(entry: Entry, train_to_end: Callable[[], Progress], result: SearchResult, target: float) -> None:
    """The last stage for one candidate left, smallest first: not trained on once a smaller one is within D;
    otherwise trained to the end of its schedule and judged by its validation Dice."""
    if result.chosen is not None:
        entry.status = "not needed"
        entry.reason = f"{result.chosen} is smaller and within {result.max_dice_loss:g} points"
        return
    progress = train_to_end()
    entry.dice = progress.dice
    loss = 100 * (result.teacher_dice - (progress.dice or 0.0))
    entry.status = "within" if progress.dice is not None and progress.dice >= target else "outside"
    entry.reason = f"validation Dice {progress.dice or 0:.4f}: {loss:.2f} points below the teacher"
    if entry.status == "within":
        result.chosen = entry.budget


def no_candidate_error(result: SearchResult) -> NnkdError:
    """The one line when no candidate ended within D: the best one found and its loss."""
    finished = [e for e in result.entries if e.dice is not None]
    if not finished:
        return NnkdError(f"no candidate student reached the end within {result.max_dice_loss:g} Dice points: "
                         "every one fell behind the teacher's curve", "accept a larger --max-dice-loss or train longer")
    best = max(finished, key=lambda e: e.dice)
    return NnkdError(f"no candidate student is within {result.max_dice_loss:g} Dice points of the teacher "
                     f"({result.teacher_dice:.4f}); the best, {best.budget}, reached {best.dice:.4f} "
                     f"({100 * (result.teacher_dice - best.dice):.2f} points below)",
                     f"accept --max-dice-loss {100 * (result.teacher_dice - best.dice):.1f} or more, or train longer")
