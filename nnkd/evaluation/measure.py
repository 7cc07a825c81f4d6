"""What nnkd measures per model, the same way for the teacher and every student: nnU-Net's whole
per-case prediction of the validation cases (preprocessing, sliding window, resampling back; no mirroring)
timed in torch, in ONNX Runtime fp32 and (with calibration patches) in ONNX Runtime int8, and nnU-Net's own
evaluation of each runtime's predictions."""

import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nnkd.evaluation.runtimes import RUNTIMES
from nnkd.inference.onnx_export import OnnxNetwork, export_onnx
from nnkd.inference.predict import make_predictor


class TeacherLogits(nn.Module):
    """A teacher as nnU-Net's predictor wants a network: patch in, logits out."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, x):
        return self.teacher(x).logits


@dataclass
class TeacherNetwork:
    """A teacher as nnU-Net's predictor runs it: `network` with one state dict per fold in `weights`, `plans` and
    `configuration`. `native`: an nnU-Net network with its own plans and configuration (exportable to ONNX);
    otherwise the teacher wrapped by TeacherLogits, run with the dataset's teacher plans."""
    network: nn.Module
    weights: list[dict]
    plans: dict
    configuration: str
    native: bool


def teacher_network(teachers: list, plans: dict, configuration: str) -> TeacherNetwork:
    """`teachers` (one per fold, the same spec) as one network for nnU-Net's predictor: an nnU-Net teacher of one
    network is that network with its own plans; any other teacher (a foundation model, TorchScript, an ensemble
    spec) is wrapped by TeacherLogits and run with `plans`/`configuration`, those the student was planned from."""
    native = [t.nnunet_network() for t in teachers]
    if all(native):
        network, own_plans, own_configuration = native[0]
        return TeacherNetwork(network, [n[0].state_dict() for n in native], own_plans, own_configuration, True)
    return TeacherNetwork(TeacherLogits(teachers[0]), [TeacherLogits(t).state_dict() for t in teachers], plans,
                          configuration, False)


def validation_images(raw_dataset: Path, cases: list[str], dataset_json: dict, images: str = "imagesTr"
                      ) -> list[tuple]:
    """(case, image, properties) of the validation cases (or of `images`="imagesTs"), read as nnU-Net reads them."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    channels = len(dataset_json["channel_names"])
    ending = dataset_json["file_ending"]
    reader = determine_reader_writer_from_dataset_json(dataset_json, None)()
    return [(case, *reader.read_images([str(raw_dataset / images / f"{case}_{c:04d}{ending}")
                                        for c in range(channels)])) for case in cases]


def labelled_test_cases(raw_dataset: Path, dataset_json: dict) -> list[str]:
    """The cases of imagesTs that have a reference segmentation in labelsTs (empty when either is missing)."""
    ending = dataset_json["file_ending"]
    if not (raw_dataset / "imagesTs").is_dir() or not (raw_dataset / "labelsTs").is_dir():
        return []
    labelled = {p.name[:-len(ending)] for p in (raw_dataset / "labelsTs").glob(f"*{ending}")}
    return sorted(c for c in labelled if (raw_dataset / "imagesTs" / f"{c}_0000{ending}").is_file())


def predict_and_evaluate(network: nn.Module, weights: list[dict], plans: dict, configuration: str,
                         dataset_json: dict, images: list[tuple], raw_dataset: Path, labels: str,
                         device: torch.device) -> dict:
    """Predict `images` as nnUNetv2_predict does with these folds' weights (their softmax averaged; no mirroring)
    and evaluate against `raw_dataset/labels` with nnU-Net's evaluation; nothing is kept but the scores."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    writer = determine_reader_writer_from_dataset_json(dataset_json, None)()
    predictor = make_predictor(plans, configuration, dataset_json, weights, network, None, device,
                               use_mirroring=False)
    predictor.allow_tqdm = False
    with tempfile.TemporaryDirectory() as tmp:
        for case, image, properties in images:
            writer.write_seg(predictor.predict_single_npy_array(image, properties),
                             str(Path(tmp) / f"{case}{dataset_json['file_ending']}"), properties)
        return evaluate(Path(tmp), raw_dataset, dataset_json, plans, labels)


def predict_and_time(predictor, images: list[tuple], output: Path | None, writer, ending: str,
                     progress=None) -> float:
    """Median seconds per case after one warm-up case; segmentations written to `output` if given."""
    seconds = []
    for i, (case, image, properties) in enumerate([images[0]] + images):
        start = time.perf_counter()
        segmentation = predictor.predict_single_npy_array(image, properties)
        if i:
            seconds.append(time.perf_counter() - start)
            if output is not None:
                writer.write_seg(segmentation, str(output / f"{case}{ending}"), properties)
            if progress is not None:
                progress.update()
    return statistics.median(seconds)


def runtime_folder(output: Path, runtime: str) -> Path:
    """Where a model's predictions in `runtime` are written: torch's in `output`, the others beside them."""
    return output if runtime == "torch" else output / runtime


def measure_model(network: nn.Module, weights: dict, plans: dict, configuration: str, dataset_json: dict,
                  images: list[tuple], output: Path, device: torch.device, runtimes=("torch",), progress=None,
                  calibration: list | None = None) -> dict:
    """Seconds per case in each of `runtimes` (torch; ONNX Runtime fp32 `onnx`; `int8`: nnkd_export's static QDQ
    quantization calibrated on the `calibration` patches), as `seconds_per_case_<runtime>`; each runtime's
    predictions are written to runtime_folder(output, runtime) for evaluation."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from nnkd.plans import num_input_channels

    unknown = set(runtimes) - set(RUNTIMES)
    if unknown or ("int8" in runtimes and not calibration):
        raise ValueError(f"runtimes {sorted(runtimes)}: unknown, or int8 without calibration patches")
    writer = determine_reader_writer_from_dataset_json(dataset_json, None)()
    ending = dataset_json["file_ending"]
    output.mkdir(parents=True, exist_ok=True)
    result = {}
    if "torch" in runtimes:
        predictor = make_predictor(plans, configuration, dataset_json, [weights], network, None, device,
                                   use_mirroring=False)
        predictor.allow_tqdm = False
        result["seconds_per_case_torch"] = predict_and_time(predictor, images, output, writer, ending, progress)
    in_onnx = [runtime for runtime in RUNTIMES[1:] if runtime in runtimes]
    if in_onnx:
        channels = num_input_channels(plans, configuration, dataset_json)
        with tempfile.TemporaryDirectory() as tmp:
            files = {"onnx": Path(tmp) / "model.onnx"}
            export_onnx(network.cpu().eval(), channels, plans["configurations"][configuration]["patch_size"],
                        files["onnx"])
            if "int8" in in_onnx:
                from nnkd.inference.quantize import quantize_student

                files["int8"] = Path(tmp) / "model.int8.onnx"
                quantize_student(files["onnx"], files["int8"], calibration)
            for runtime in in_onnx:
                predictor = make_predictor(plans, configuration, dataset_json, [{}],
                                           OnnxNetwork(files[runtime], channels), None, torch.device("cpu"),
                                           use_mirroring=False)
                predictor.allow_tqdm = False
                folder = runtime_folder(output, runtime)
                folder.mkdir(parents=True, exist_ok=True)
                result[f"seconds_per_case_{runtime}"] = predict_and_time(predictor, images, folder, writer, ending,
                                                                         progress)
    return result


def measured_runtimes(record: dict) -> list[str]:
    """The runtimes a measurement record (measure_model's result, merged with evaluate_runtimes') holds."""
    return [runtime for runtime in RUNTIMES if record.get(f"seconds_per_case_{runtime}") is not None]


def only_runtimes(record: dict, runtimes) -> dict:
    """A measurement record as if only `runtimes` had been measured: the others' seconds are None and their Dice
    left out (a rerun that asks for fewer runtimes reports what it asked for)."""
    kept = {k: v for k, v in record.items()
            if not any(k in (f"dice_{r}", f"dice_per_class_{r}") for r in RUNTIMES[1:] if r not in runtimes)}
    return kept | {f"seconds_per_case_{r}": record.get(f"seconds_per_case_{r}") if r in runtimes else None
                   for r in RUNTIMES}


def evaluate(predictions: Path, raw_dataset: Path, dataset_json: dict, plans: dict, labels: str = "labelsTr") -> dict:
    """nnU-Net's evaluation of a folder of predictions against labelsTr (or `labels`): mean foreground Dice and per
    class (summary.json beside the predictions)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2

    with tempfile.TemporaryDirectory() as tmp:  # nnU-Net's evaluation reads both from files
        files = {name: Path(tmp) / f"{name}.json" for name in ("dataset", "plans")}
        files["dataset"].write_text(json.dumps(dataset_json))
        files["plans"].write_text(json.dumps(plans))
        compute_metrics_on_folder2(str(raw_dataset / labels), str(predictions), str(files["dataset"]),
                                   str(files["plans"]), str(predictions / "summary.json"), num_processes=1, chill=True)
    summary = json.loads((predictions / "summary.json").read_text())
    return {"dice": summary["foreground_mean"]["Dice"],
            "dice_per_class": {str(k): v["Dice"] for k, v in summary["mean"].items()}}


def evaluate_runtimes(measured: dict, output: Path, raw_dataset: Path, dataset_json: dict, plans: dict) -> dict:
    """Dice of every runtime that `measured` holds: `dice` / `dice_per_class` for torch, `dice_onnx`, `dice_int8`
    (and their `_per_class`) for ONNX Runtime fp32 and int8."""
    result = {}
    for runtime in measured_runtimes(measured):
        scores = evaluate(runtime_folder(output, runtime), raw_dataset, dataset_json, plans)
        suffix = "" if runtime == "torch" else f"_{runtime}"
        result |= {f"dice{suffix}": scores["dice"], f"dice_per_class{suffix}": scores["dice_per_class"]}
    return result
