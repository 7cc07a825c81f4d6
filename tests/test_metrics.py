"""nnkd.metrics: the one per-label Dice, as nnU-Net's evaluation counts it."""

import numpy as np
import pytest

from nnkd.metrics import dice_per_label, mean_dice_per_label


def maps():
    reference = np.zeros((4, 4, 4), dtype=np.uint8)
    reference[:2] = 1  # 32 voxels of label 1
    reference[3, 3, 3] = 2
    predicted = reference.copy()
    predicted[1] = 0  # 16 of them missed
    predicted[2, 0, 0] = 1  # one false voxel
    return predicted, reference


def test_dice_per_label_counts_as_nnunet_and_leaves_out_a_label_in_neither_map():
    predicted, reference = maps()
    scores = dice_per_label(predicted, reference, [1, 2, 3])
    # label 1: TP 16, FP 1, FN 16 -> 32 / 49; label 2 exact; label 3 in neither map: left out (nnU-Net's NaN)
    assert scores == pytest.approx({1: 32 / 49, 2: 1.0})
    predicted[3, 3, 3] = 0
    assert dice_per_label(predicted, reference, [2]) == {2: 0.0}  # missed entirely: 0, not left out


def test_dice_per_label_equals_nnunets_own_evaluation_of_the_same_maps():
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    rng = np.random.default_rng(0)
    reference, predicted = rng.integers(0, 4, (2, 6, 7, 8))
    for label, value in dice_per_label(predicted, reference, [1, 2, 3]).items():
        tp, fp, fn, _ = compute_tp_fp_fn_tn(reference == label, predicted == label)
        assert value == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_mean_dice_per_label_averages_the_cases_that_have_the_label():
    predicted, reference = maps()
    empty = np.zeros_like(reference)
    scores = mean_dice_per_label({"a": predicted, "b": empty}, {"a": reference, "b": empty}, [1, 2, 3])
    assert scores == pytest.approx({1: 32 / 49, 2: 1.0})  # case b has no label at all: it counts for none


def test_label_maps_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="different shapes"):
        dice_per_label(np.zeros((2, 2)), np.zeros((2, 3)), [1])
