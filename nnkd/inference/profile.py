"""`nnkd_predict --profile`: where a case's time goes.

The cases are predicted one after the other in this process, through the same nnU-Net functions that
`predict_from_files` runs in its workers, each step timed: read (the image reader of the plans), preprocess
(nnU-Net's preprocessor: crop, normalize, resample to the plans' spacing), network (nnU-Net's sliding window,
mirroring as asked), resample (logits back to the original geometry and to a label map), write. The
predictions are the ones `predict_from_files` writes; only the overlap of nnU-Net's background workers is
given up, so every step is measured alone.
"""

import statistics
import time
from pathlib import Path

import numpy as np

STEPS = ("read", "preprocess", "network", "resample", "write")


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predict_profiled(predictor, cases: dict[str, list[str]], output: Path, save_probabilities: bool,
                     progress=None) -> dict:
    """Predict `cases` (case -> channel files) into `output`, timing each step; the profile record."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    plans_manager, cm = predictor.plans_manager, predictor.configuration_manager
    reader = plans_manager.image_reader_writer_class()
    preprocessor = cm.preprocessor_class(verbose=False)
    ending = predictor.dataset_json["file_ending"]
    per_case = {}
    for case, files in cases.items():
        seconds, start = {}, time.perf_counter()

        def lap(step: str) -> None:
            nonlocal start
            now = time.perf_counter()
            seconds[step] = round(now - start, 4)
            start = now

        image, properties = reader.read_images(files)
        lap("read")
        data, _, properties = preprocessor.run_case_npy(image, None, properties, plans_manager, cm,
                                                        predictor.dataset_json)
        shape = list(data.shape[1:])
        lap("preprocess")
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
        _synchronize(predictor.device)
        lap("network")
        converted = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, plans_manager, cm, predictor.label_manager, properties, return_probabilities=save_probabilities)
        segmentation = converted[0] if save_probabilities else converted
        lap("resample")
        reader.write_seg(segmentation, str(output / f"{case}{ending}"), properties)
        if save_probabilities:
            np.savez_compressed(output / f"{case}.npz", probabilities=converted[1])
            save_pickle(properties, str(output / f"{case}.pkl"))
        lap("write")
        per_case[case] = {"seconds": seconds, "total": round(sum(seconds.values()), 4),
                          "original_shape": list(image.shape[1:]), "preprocessed_shape": shape}
        if progress is not None:
            progress.update()
    return {"steps": list(STEPS), "cases": per_case, "median": median_split(per_case)}


def median_split(per_case: dict) -> dict:
    """Median seconds of each step over the cases, the total, and each step's share of the median total."""
    medians = {step: statistics.median(c["seconds"][step] for c in per_case.values()) for step in STEPS}
    total = sum(medians.values())
    return {"seconds": {k: round(v, 4) for k, v in medians.items()}, "total": round(total, 4),
            "share": {k: round(v / total, 3) if total else None for k, v in medians.items()}}


def format_profile(record: dict) -> str:
    median = record["median"]
    lines = [f"{'step':12}{'median s':>10}{'share':>8}"]
    for step in record["steps"]:
        lines.append(f"{step:12}{median['seconds'][step]:>10.3f}{median['share'][step] * 100:>7.0f}%")
    lines.append(f"{'per case':12}{median['total']:>10.3f}")
    return "\n".join(lines)
