"""Dice per label between two label maps, counted as nnU-Net's evaluation counts it (its public
`compute_tp_fp_fn_tn`): 2·TP / (2·TP + FP + FN) per foreground label, and a label that is in neither map is left
out (nnU-Net scores it NaN and its means skip it). The one Dice of nnkd's own comparisons (int8 and float ONNX
students on the validation cases) and of the benchmark scripts; nnkd_benchmark reads nnU-Net's summary.json."""

from collections.abc import Iterable, Mapping

import numpy as np


def dice_per_label(predicted: np.ndarray, reference: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """{label: Dice} for each of `labels` present in either map, as nnU-Net's evaluate_predictions scores it."""
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    predicted, reference = np.asarray(predicted), np.asarray(reference)
    if predicted.shape != reference.shape:
        raise ValueError(f"label maps of different shapes: {predicted.shape} and {reference.shape}")
    out = {}
    for label in labels:
        tp, fp, fn, _ = compute_tp_fp_fn_tn(reference == label, predicted == label)
        if tp + fp + fn:
            out[int(label)] = float(2 * tp / (2 * tp + fp + fn))
    return out


def mean_dice_per_label(predicted: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                        labels: Iterable[int]) -> dict[int, float]:
    """{label: mean over the cases of `reference` of its Dice}, each case's absent label left out, as nnU-Net's
    summary.json means; a label in no case of either map is left out too."""
    labels = list(labels)
    per_case = [dice_per_label(predicted[case], reference[case], labels) for case in reference]
    out = {}
    for label in labels:
        values = [d[label] for d in per_case if label in d]
        if values:
            out[label] = float(np.mean(values))
    return out
