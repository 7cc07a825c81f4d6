"""nnkd_predict: nnU-Net's predictor on the student alone (or on its ONNX export)."""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from nnkd.devices import resolve_device
from nnkd.inference.inputs import check_folders, collect_cases
from nnkd.inference.students import StudentRef, load_student_weights, locate


@dataclass
class PredictRequest:
    input_folder: Path
    output_folder: Path
    student: StudentRef
    onnx: Path | None = None
    device: str | None = None
    step_size: float = 0.5
    disable_tta: bool = False
    save_probabilities: bool = False
    continue_prediction: bool = False
    num_processes_preprocessing: int = 3
    num_processes_export: int = 3
    profile: bool = False  # predict case by case, timing read / preprocess / network / resample / write


def make_predictor(plans: dict, configuration: str, dataset_json: dict, weights: list[dict], network,
                   mirror_axes, device: torch.device, step_size: float = 0.5, use_mirroring: bool = True,
                   trainer_name: str = "nnUNetTrainer"):
    """An nnUNetPredictor around `network` (the student, or its ONNX session) without importing a trainer."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, allow_tqdm=True)
    manager = PlansManager(plans)
    network = network.to(device).eval()
    network.load_state_dict(weights[0])
    predictor.manual_initialization(network, manager, manager.get_configuration(configuration), weights,
                                    dataset_json, trainer_name, mirror_axes)
    return predictor


def predict(request: PredictRequest) -> Path:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnkd.plans import network_from_plans, num_input_channels

    input_folder, output_folder = check_folders(request.input_folder, request.output_folder)
    student = locate(request.student)
    plans, dataset_json, configuration = student.plans, student.dataset_json, request.student.configuration
    manager = PlansManager(plans)
    channels = num_input_channels(plans, configuration, dataset_json)
    cases = collect_cases(input_folder, dataset_json["file_ending"], channels, manager.image_reader_writer_class())
    if request.continue_prediction:
        endings = [dataset_json["file_ending"]] + ([".npz"] if request.save_probabilities else [])
        cases = {c: f for c, f in cases.items() if not all((output_folder / (c + e)).is_file() for e in endings)}
        print(f"--continue_prediction: {len(cases)} case(s) left to predict")
    device = resolve_device(request.device)
    if request.onnx is not None:  # the torch checkpoints are not loaded
        from nnkd.inference.onnx_export import OnnxNetwork, onnx_mirror_axes

        network, weights = OnnxNetwork(request.onnx, channels), [{}]
        mirror_axes, trainer_name = onnx_mirror_axes(Path(request.onnx), student), "nnUNetTrainer"
    else:
        weights, first = load_student_weights(student)
        network = network_from_plans(plans, configuration, dataset_json, allow_init=False)
        mirror_axes, trainer_name = first.get("inference_allowed_mirroring_axes"), first.get("trainer_name")
    predictor = make_predictor(plans, configuration, dataset_json, weights, network, mirror_axes, device,
                               request.step_size, not request.disable_tta, trainer_name or "nnUNetTrainer")
    task = f", task {student.task} (its experts fused)" if student.task else ""
    print(f"Predicting {len(cases)} case(s) with {student.model_folder.name}{task}, folds "
          f"{', '.join(student.checkpoints)}{' through ONNX Runtime' if request.onnx else ''}")
    output_folder.mkdir(parents=True, exist_ok=True)
    if not cases:
        return output_folder
    staging = output_folder / f".nnkd-predict-{os.getpid()}"
    try:
        if request.profile:
            profile = _profiled(predictor, cases, staging, request, student, device)
        else:
            predictor.predict_from_files([cases[c] for c in cases], [str(staging / c) for c in cases],
                                         save_probabilities=request.save_probabilities, overwrite=True,
                                         num_processes_preprocessing=request.num_processes_preprocessing,
                                         num_processes_segmentation_export=request.num_processes_export)
        for item in sorted(staging.iterdir()):  # whole files appear in the output folder, nothing partial
            os.replace(item, output_folder / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"Wrote {len(cases)} prediction(s) to {output_folder}")
    if request.profile:
        from nnkd.atomic import write_json_atomic
        from nnkd.inference.profile import format_profile

        write_json_atomic(output_folder / PROFILE_FILE, profile)
        print(format_profile(profile) + f"\n(per case: {output_folder / PROFILE_FILE})")
    return output_folder


PROFILE_FILE = "profile.json"


def _profiled(predictor, cases: dict, staging: Path, request: PredictRequest, student, device) -> dict:
    """Predict case by case, each step timed (nnkd.inference.profile), with what the times depend on."""
    import platform

    from tqdm import tqdm

    from nnkd.inference.profile import predict_profiled

    staging.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(cases), desc="profile", unit="case") as progress:
        record = predict_profiled(predictor, cases, staging, request.save_probabilities, progress)
    return {"model": str(student.model_folder), "folds": list(student.checkpoints),
            "runtime": "onnxruntime" if request.onnx else "torch", "onnx": str(request.onnx) if request.onnx else None,
            "device": device.type, "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor() or None, "step_size": request.step_size,
            "mirroring": not request.disable_tta and bool(predictor.allowed_mirroring_axes), **record}
