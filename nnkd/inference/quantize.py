"""int8 students: ONNX Runtime static quantization of an exported student (`nnkd_export --onnx --int8`).

QDQ format, weights int8 per output channel, activations int8 per tensor, calibrated on patches of the fold's
preprocessed training cases (half of them centred on a foreground voxel, so the small classes' activations
are in the calibration range). Convolutions are quantized, except the first (it reads the image) and the last
(it writes the logits); instance normalization, the nonlinearities and
the transposed convolutions of the decoder stay float (ONNX Runtime has no int8 kernel for instance
normalization). The export then predicts the fold's validation
cases with the float and the int8 model through nnU-Net's predictor and reports both Dice values.
"""

import os
from pathlib import Path

import numpy as np

from nnkd.errors import NnkdError
from nnkd.folds import cases_of_fold, read_splits
from nnkd.metrics import dice_per_label
from nnkd.nnunet_env import require_env

CALIBRATION_PATCHES = 16
CALIBRATION_SEED = 0
QUANTIZED_OPS = ("Conv",)


def require_quantization() -> None:
    """Stop with one line when onnxruntime's quantization tools cannot be imported."""
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as e:
        raise NnkdError("onnxruntime is not installed", 'pip install "nnkd[onnx]"') from e


def fold_cases(dataset_name: str, plans: dict, configuration: str, fold: str) -> tuple[Path, list[str], list[str]]:
    """(preprocessed data folder, the fold's training cases there, its validation cases) of a model planned by
    `plans`."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    preprocessed = require_env("nnUNet_preprocessed")["nnUNet_preprocessed"] / dataset_name
    identifier = plans["configurations"][configuration]["data_identifier"]
    data_folder = preprocessed / identifier
    present = set(infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder))) \
        if data_folder.is_dir() else set()
    splits = read_splits(preprocessed)
    if fold == "all":
        train, val = sorted(present), sorted(present)
    elif splits is not None:
        train, val = cases_of_fold(splits, fold, "train"), cases_of_fold(splits, fold, "val")
    else:
        train, val = [], []
    train = [c for c in train if c in present]
    if not train:
        raise NnkdError(f"no preprocessed training case of fold {fold} in {data_folder} to calibrate the int8 "
                        "model on", "preprocess the dataset (nnkd_plan_and_preprocess) or export without --int8")
    return data_folder, train, list(val)


def calibration_patches(data_folder: Path, cases: list[str], patch_size, count: int = CALIBRATION_PATCHES,
                        seed: int = CALIBRATION_SEED) -> list[np.ndarray]:
    """`count` patches (1, C, *patch) of the cases, in turn; every other one centred on a foreground voxel."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    dataset = infer_dataset_class(str(data_folder))(str(data_folder), identifiers=cases)
    rng = np.random.default_rng(seed)
    patch = np.array(patch_size)
    patches = []
    for i in range(count):
        data, _, _, properties = dataset.load_case(cases[i % len(cases)])
        data = np.asarray(data[:], dtype=np.float32)
        shape = np.array(data.shape[1:])
        locations = [np.asarray(v) for v in (properties.get("class_locations") or {}).values() if len(v)]
        if i % 2 == 0 and locations:
            voxels = locations[rng.integers(len(locations))]
            centre = voxels[rng.integers(len(voxels))][1:]
        else:
            centre = np.array([rng.integers(s) for s in shape])
        lead = len(shape) - len(patch)  # a 2D configuration: a slice of the case, then the in-plane crop
        data = data[(slice(None), *[int(c) for c in centre[:lead]])]
        shape, centre = shape[lead:], np.asarray(centre[lead:])
        start = np.clip(centre - patch // 2, 0, np.maximum(shape - patch, 0))
        crop = data[(slice(None), *[slice(a, a + p) for a, p in zip(start, patch)])]
        pad = [(0, 0)] + [(0, int(p - s)) for p, s in zip(patch, crop.shape[1:])]
        patches.append(np.pad(crop, pad)[None])
    return patches


def edge_convolutions(model) -> list[str]:
    """The names of the convolutions that read the network's input or write its output (an ONNX ModelProto).

    quantize_student keeps them float. Quantizing the first one quantizes the image itself to 8 bits with the
    range seen on the calibration patches: on trained 2D synthetic models this cost 0.2–5.8 Dice points, most of
    it on a thin bright vessel, and keeping it float recovered all but 0.4 (docs/deploy.md). These two
    convolutions hold a tiny share of the network's work (few input or output channels)."""
    inputs, outputs = {i.name for i in model.graph.input}, {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and n.name and (set(n.input) & inputs or set(n.output) & outputs)]


def quantize_student(fp32: Path, int8: Path, patches: list[np.ndarray]) -> list[str]:
    """Write `int8`: the QDQ static quantization of `fp32`, calibrated on `patches` (a temp file, then renamed).
    Returns the convolutions kept float (edge_convolutions)."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError as e:
        raise NnkdError("onnxruntime is not installed", 'pip install "nnkd[onnx]"') from e

    class Patches(CalibrationDataReader):
        """The patches, in the ranges ONNX Runtime's strided calibration asks for (set_range, __len__)."""

        def __init__(self):
            self.set_range(0, len(patches))

        def __len__(self):
            return len(patches)

        def set_range(self, start_index: int, end_index: int):
            self.items = iter([{"input": p} for p in patches[start_index:end_index]])

        def get_next(self):
            return next(self.items, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = int8.with_name(f".{int8.name}.tmp-{os.getpid()}")
    prepared = int8.with_name(f".{int8.name}.prepared-{os.getpid()}")
    try:  # ONNX Runtime's recommended pre-processing: shape inference and graph optimization (symbolic shapes skipped:
        # the spatial axes are dynamic)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        import onnx

        kept_float = edge_convolutions(onnx.load(str(prepared), load_external_data=False))
        quantize_static(str(prepared), str(tmp), Patches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=kept_float,
                        # min/max patch by patch, merged (the same ranges): otherwise ONNX Runtime keeps every
                        # activation of every calibration patch, which exhausts memory on a full-size 3D network
                        # (> 7 GB after a few 128³ patches of nnU-Net's default plan). CalibMaxIntermediateOutputs
                        # would discard the patches instead (onnxruntime issue #18893)
                        extra_options={"CalibStridedMinMax": 1})
        tmp.replace(int8)
        return kept_float
    finally:
        tmp.unlink(missing_ok=True)
        prepared.unlink(missing_ok=True)


def compare_on_validation(student, models: dict[str, Path], cases: list[str], mirror_axes) -> dict:
    """Predict the validation cases with each ONNX model (nnU-Net's predictor, no mirroring) against the ground
    truth nnU-Net keeps (gt_segmentations): Dice per model (mean over cases and foreground labels) and the share
    of voxels on which the models' labels agree."""
    import torch

    from nnkd.inference.onnx_export import OnnxNetwork
    from nnkd.inference.predict import make_predictor
    from nnkd.plans import num_input_channels

    paths = require_env("nnUNet_raw", "nnUNet_preprocessed")
    plans, dataset_json, configuration = student.plans, student.dataset_json, student.configuration
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    reader = PlansManager(plans).image_reader_writer_class()
    channels = num_input_channels(plans, configuration, dataset_json)
    ending = dataset_json["file_ending"]
    raw = paths["nnUNet_raw"] / student.dataset_name
    truth_folder = paths["nnUNet_preprocessed"] / student.dataset_name / "gt_segmentations"
    cases = [c for c in cases if (truth_folder / f"{c}{ending}").is_file()
             and all((raw / "imagesTr" / f"{c}_{i:04d}{ending}").is_file() for i in range(channels))]
    if not cases:
        return {"cases": 0}
    labels = [int(v) for k, v in dataset_json["labels"].items() if k != "background" and isinstance(v, int)]
    predictors = {name: make_predictor(plans, configuration, dataset_json, [{}], OnnxNetwork(path, channels), mirror_axes,
                                       torch.device("cpu"), use_mirroring=False) for name, path in models.items()}
    dice = {name: [] for name in models}
    agree, voxels = 0, 0
    for case in cases:
        image, properties = reader.read_images([str(raw / "imagesTr" / f"{case}_{i:04d}{ending}")
                                                for i in range(channels)])
        truth = reader.read_seg(str(truth_folder / f"{case}{ending}"))[0][0]
        predicted = {}
        for name, predictor in predictors.items():
            predictor.allow_tqdm = False
            predicted[name] = predictor.predict_single_npy_array(image, properties)
            dice[name] += list(dice_per_label(predicted[name], truth, labels).values())
        first, *others = predicted.values()
        for other in others:
            agree += int((first == other).sum())
            voxels += first.size
    return {"cases": len(cases), "dice": {name: float(np.mean(v)) if v else None for name, v in dice.items()},
            "label_agreement": agree / voxels if voxels else None}
