"""The --max-dice-loss search's logic with stubbed training: the ladder, successive halving, the choice."""

import pytest

from nnkd.errors import NnkdError
from nnkd.pipeline.search import Candidate, Progress, ladder, no_candidate_error, parse_ladder, run_search
from nnkd.planners.budget import Budget

EPOCHS, ITERATIONS = 16, 10


def _candidates(final: dict[int, float]) -> list[Candidate]:
    return [Candidate(Budget(preset=f"1/{n}"), parameters=64_000 // n, gflops_per_patch=64 / n) for n in final]


def _stub(final: dict[int, float], teacher_ema: list[float]):
    """Each candidate's EMA follows the teacher's curve scaled to its final Dice; seconds ∝ its size."""
    calls = []

    def train(candidate: Candidate, epoch: int) -> Progress:
        n = int(candidate.budget.preset.split("/")[1])
        calls.append((n, epoch))
        ema = [v * final[n] / teacher_ema[-1] for v in teacher_ema[:epoch]]
        return Progress(ema=ema, dice=final[n] if epoch == EPOCHS else None, seconds_per_iteration=1.0 / n)

    return train, calls


TEACHER_EMA = [min(0.9, 0.2 + 0.08 * e) for e in range(EPOCHS)]


def test_the_smallest_candidate_within_d_is_chosen_and_the_larger_ones_are_not_trained_on():
    final = {4: 0.895, 16: 0.893, 64: 0.885, 256: 0.70}
    train, calls = _stub(final, TEACHER_EMA)
    result = run_search(_candidates(final), train, teacher_dice=0.90, max_dice_loss=1.0, epochs=EPOCHS,
                        iterations_per_epoch=ITERATIONS, teacher_ema=TEACHER_EMA)
    assert result.chosen == "frac16"
    status = {e.budget: e.status for e in result.entries}
    assert status == {"frac256": "dropped", "frac64": "outside", "frac16": "within", "frac4": "not needed"}
    assert [e.budget for e in result.entries] == ["frac256", "frac64", "frac16", "frac4"]  # smallest first
    assert (4, EPOCHS) not in calls and (16, EPOCHS) in calls  # the largest never trained to the end
    assert [e for n, e in calls if n == 4] == [2]  # nor past the first rung: a smaller one answered first
    dropped = next(e for e in result.entries if e.status == "dropped")
    assert dropped.epochs_trained == 8 and "points behind" in dropped.reason  # on course at 1/8, not at 1/2
    record = result.to_json()
    assert record["chosen"] == "frac16" and len(record["candidates"]) == 4
    # cost: frac256 8 epochs (to the second rung), frac64 and frac16 all 16, frac4 2 (the first), × their seconds
    expected = ITERATIONS * (8 / 256 + 16 / 64 + 16 / 16 + 2 / 4)
    assert result.search_seconds == pytest.approx(expected)
    assert result.cost_vs_chosen() == pytest.approx(expected / (ITERATIONS * 16 / 16))


def test_no_candidate_within_d_names_the_best_and_its_loss():
    final = {4: 0.87, 16: 0.86}
    train, _ = _stub(final, TEACHER_EMA)
    result = run_search(_candidates(final), train, teacher_dice=0.90, max_dice_loss=1.0, epochs=EPOCHS,
                        iterations_per_epoch=ITERATIONS, teacher_ema=TEACHER_EMA)
    assert result.chosen is None and {e.status for e in result.entries} == {"outside"}
    assert [e.epochs_trained for e in result.entries] == [EPOCHS, EPOCHS]  # each finished, smallest first
    error = no_candidate_error(result)
    assert "the best, frac4, reached 0.8700 (3.00 points below)" in str(error)
    assert "--max-dice-loss 3.0" in error.remedy


def test_without_a_teacher_curve_the_teachers_final_dice_is_the_reference():
    final = {4: 0.899, 64: 0.5}
    train, calls = _stub(final, TEACHER_EMA)
    result = run_search(_candidates(final), train, teacher_dice=0.90, max_dice_loss=1.0, epochs=EPOCHS,
                        iterations_per_epoch=ITERATIONS)
    assert result.chosen == "frac4"
    assert {e.budget: e.status for e in result.entries}["frac64"] == "dropped"


@pytest.mark.parametrize("loss", [0, -1, float("nan"), float("inf")])
def test_the_loss_must_be_a_positive_finite_number_of_points(loss):
    with pytest.raises(NnkdError, match="max-dice-loss"):
        run_search(_candidates({4: 0.9}), lambda c, e: Progress([0.9]), teacher_dice=0.9, max_dice_loss=loss,
                   epochs=4, iterations_per_epoch=1)


def test_ladders_step_by_halves_from_a_quarter_to_1_256_of_the_teacher():
    params = ladder("params", teacher_params=1_024_000)
    assert [b.max_params for b in params] == [256_000, 128_000, 64_000, 32_000, 16_000, 8_000, 4_000]
    assert params[0].max_gflops is None  # GFLOPs left free: the smallest fractions stay plannable
    assert [b.max_gflops for b in ladder("gflops", teacher_gflops=64.0, fractions=(64, 4))] == [16.0, 1.0]
    latency = ladder("latency", teacher_latency_ms=256.0)
    assert latency[0].max_latency_ms == 64.0 and latency[-1].max_latency_ms == 1.0
    assert parse_ladder("1/4,1/64") == (4, 64)
    for bad in ("1/1", "2/3", "1/x", ""):
        with pytest.raises(NnkdError, match="ladder"):
            parse_ladder(bad)
    with pytest.raises(NnkdError, match="objective"):
        ladder("dice", teacher_params=10)
    with pytest.raises(NnkdError, match="latency"):
        ladder("latency")


def test_only_the_first_rung_is_side_by_side_later_rungs_go_one_candidate_at_a_time():
    """Candidates train past the first rung one at a time from the smallest; a larger one is trained on only when
    every smaller one was dropped or ended outside D, and the largest left always finishes (the best found)."""
    final = {4: 0.896, 16: 0.80, 64: 0.60}
    train, calls = _stub(final, TEACHER_EMA)
    result = run_search(_candidates(final), train, teacher_dice=0.90, max_dice_loss=1.0, epochs=EPOCHS,
                        iterations_per_epoch=ITERATIONS, teacher_ema=TEACHER_EMA)
    assert calls[:3] == [(64, 2), (16, 2), (4, 2)]  # the first rung: all of them
    assert calls[3:] == [(64, 8), (16, 8), (4, 8), (4, EPOCHS)]  # frac64 and frac16 dropped at the second rung
    assert result.chosen == "frac4"
    worse = {4: 0.70, 16: 0.60}  # the largest is behind the teacher's curve too: it still finishes
    train, calls = _stub(worse, TEACHER_EMA)
    result = run_search(_candidates(worse), train, teacher_dice=0.90, max_dice_loss=1.0, epochs=EPOCHS,
                        iterations_per_epoch=ITERATIONS, teacher_ema=TEACHER_EMA)
    assert result.chosen is None and (4, EPOCHS) in calls
    assert "the best, frac4, reached 0.7000" in str(no_candidate_error(result))
