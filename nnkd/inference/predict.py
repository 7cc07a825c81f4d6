"""nnkd_predict: nnU-Net's predictor on the student alone (or on its ONNX export)."""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from nnkd.atomic import write_json_atomic
from nnkd.devices import resolve_device
from nnkd.errors import NnkdError
from nnkd.inference.inputs import check_folders, collect_cases
from nnkd.inference.students import StudentRef, load_student_weights, locate
from nnkd.outputs import OutputLock, check_output, check_replaceable, write_manifest

COMMAND = "nnkd_predict"


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
    bf16: bool = False  # the network under bf16 autocast on a CPU that computes bf16 (nnkd.devices.cpu_bf16)
    fast: bool = True  # CPU: the fastest of nnkd.inference.fast.CANDIDATES, checked against stock; False: stock torch


def predictor_class(bf16: bool = False):
    """nnU-Net's nnUNetPredictor, or (bf16) its subclass that runs the sliding window under CPU bf16 autocast, as
    nnU-Net's own runs it under float16 autocast on a GPU (nnU-Net autocasts only there: CPUs without bf16
    instructions emulate it, slowly). The logits go into nnU-Net's own float16 accumulator either way."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if not bf16:
        return nnUNetPredictor

    class nnUNetPredictorCPUbf16(nnUNetPredictor):
        def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return super().predict_sliding_window_return_logits(input_image)

    return nnUNetPredictorCPUbf16


def check_bf16(device: torch.device, onnx: bool) -> None:
    """`--bf16` asks for something this device and runtime can do, else one clear error."""
    from nnkd.devices import CPU_BF16_ENV, cpu_bf16

    if onnx:
        raise NnkdError("--bf16 runs the torch network; it does not apply with --onnx",
                        "leave out --bf16 or --onnx")
    if device.type != "cpu":
        raise NnkdError(f"--bf16 is for the CPU, and this prediction runs on {device.type}",
                        "leave out --bf16 (on CUDA nnU-Net's predictor already runs in float16 autocast)")
    if not cpu_bf16(device):
        raise NnkdError("this CPU does not compute bf16 natively (no AVX512-BF16 / AMX-BF16), or "
                        f"{CPU_BF16_ENV}=0 turned it off: bf16 would be emulated and slower than float32",
                        f"leave out --bf16 (or set {CPU_BF16_ENV}=1 to force it)")


def make_predictor(plans: dict, configuration: str, dataset_json: dict, weights: list[dict], network,
                   mirror_axes, device: torch.device, step_size: float = 0.5, use_mirroring: bool = True,
                   trainer_name: str = "nnUNetTrainer", bf16: bool = False):
    """An nnUNetPredictor around `network` (the student, or its ONNX session) without importing a trainer; bf16:
    the network runs under CPU bf16 autocast (predictor_class)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    predictor = predictor_class(bf16)(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                      perform_everything_on_device=device.type == "cuda", device=device,
                                      verbose=False, allow_tqdm=True)
    manager = PlansManager(plans)
    network = network.to(device).eval()
    network.load_state_dict(weights[0])
    predictor.manual_initialization(network, manager, manager.get_configuration(configuration), weights,
                                    dataset_json, trainer_name, mirror_axes)
    return predictor


def check_count(value: int, flag: str) -> None:
    """A number of processes, at least 1 (nnU-Net's pools fail later, with a traceback, on 0)."""

    if value < 1:
        raise NnkdError(f"{flag} {value} must be at least 1", f"give {flag} 1 or more")


def predict(request: PredictRequest) -> Path:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnkd.plans import network_from_plans, num_input_channels

    input_folder, output_folder = check_folders(request.input_folder, request.output_folder)
    for flag, count in (("-npp", request.num_processes_preprocessing), ("-nps", request.num_processes_export)):
        check_count(count, flag)
    student = locate(request.student)
    output_folder = check_output(output_folder, COMMAND, inputs=[input_folder, student.model_folder], replaces=False)
    plans, dataset_json, configuration = student.plans, student.dataset_json, request.student.configuration
    manager = PlansManager(plans)
    channels = num_input_channels(plans, configuration, dataset_json)
    cases = collect_cases(input_folder, dataset_json["file_ending"], channels, manager.image_reader_writer_class())
    if request.continue_prediction:
        endings = [dataset_json["file_ending"]] + ([".npz"] if request.save_probabilities else [])
        cases = {c: f for c, f in cases.items() if not all((output_folder / (c + e)).is_file() for e in endings)}
        print(f"--continue_prediction: {len(cases)} case(s) left to predict")
    written = [c + e for c in cases for e in [dataset_json["file_ending"]]
               + ([".npz", ".pkl"] if request.save_probabilities else [])] + ([PROFILE_FILE] if request.profile else [])
    check_replaceable(output_folder, written, COMMAND)
    device = resolve_device(request.device)
    if request.bf16:
        check_bf16(device, request.onnx is not None)
    fast = None
    if request.onnx is not None:  # the torch checkpoints are not loaded
        from nnkd.inference.onnx_export import OnnxNetwork, onnx_mirror_axes

        network, weights = OnnxNetwork(request.onnx, channels), [{}]
        mirror_axes, trainer_name = onnx_mirror_axes(Path(request.onnx), student), "nnUNetTrainer"
    else:
        weights, first = load_student_weights(student)
        network = network_from_plans(plans, configuration, dataset_json, allow_init=False)
        mirror_axes, trainer_name = first.get("inference_allowed_mirroring_axes"), first.get("trainer_name")
        if fast_path_applies(request, device):
            from nnkd.inference.fast import choose_for_plans

            fast = choose_for_plans(network, weights, plans, configuration, channels)
            print(fast.summary())
            network = fast.network
    predictor = make_predictor(plans, configuration, dataset_json, weights, network, mirror_axes, device,
                               request.step_size, not request.disable_tta, trainer_name or "nnUNetTrainer",
                               request.bf16)
    task = f", task {student.task} (its experts fused)" if student.task else ""
    runtime = (" through ONNX Runtime" if request.onnx else " in bf16 autocast" if request.bf16
               else f" on the fast path ({fast.runtime})" if fast else "")
    print(f"Predicting {len(cases)} case(s) with {student.model_folder.name}{task}, folds "
          f"{', '.join(student.checkpoints)}{runtime}")
    with OutputLock(output_folder, COMMAND):
        output_folder.mkdir(parents=True, exist_ok=True)
        if cases:
            _predict_into(output_folder, predictor, cases, request, student, device, written, fast)
    return output_folder


def fast_path_applies(request: PredictRequest, device: torch.device) -> bool:
    """The fast path runs the student's torch checkpoints on a CPU, unless --stock, --onnx or --bf16 asks otherwise."""
    return request.fast and device.type == "cpu" and request.onnx is None and not request.bf16


def _predict_into(output_folder: Path, predictor, cases: dict, request: PredictRequest, student, device,
                  written: list[str], fast=None) -> None:
    staging = output_folder / f".nnkd-predict-{os.getpid()}"
    try:
        if request.profile:
            profile = _profiled(predictor, cases, staging, request, student, device, fast)
        else:
            predictor.predict_from_files([cases[c] for c in cases], [str(staging / c) for c in cases],
                                         save_probabilities=request.save_probabilities, overwrite=True,
                                         num_processes_preprocessing=request.num_processes_preprocessing,
                                         num_processes_segmentation_export=request.num_processes_export)
        write_manifest(output_folder, COMMAND, written, add=True)  # before the files: a kill leaves them nnkd's
        for item in sorted(staging.iterdir()):  # whole files appear in the output folder, nothing partial
            os.replace(item, output_folder / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"Wrote {len(cases)} prediction(s) to {output_folder}")
    if request.profile:
        from nnkd.inference.profile import format_profile

        write_json_atomic(output_folder / PROFILE_FILE, profile)
        print(format_profile(profile) + f"\n(per case: {output_folder / PROFILE_FILE})")


PROFILE_FILE = "profile.json"


def _profiled(predictor, cases: dict, staging: Path, request: PredictRequest, student, device, fast=None) -> dict:
    """Predict case by case, each step timed (nnkd.inference.profile), with what the times depend on."""
    import platform

    from tqdm import tqdm

    from nnkd.inference.profile import predict_profiled

    staging.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(cases), desc="profile", unit="case") as progress:
        record = predict_profiled(predictor, cases, staging, request.save_probabilities, progress)
    runtime = ("onnxruntime" if request.onnx else "torch bf16" if request.bf16
               else f"{fast.runtime} (fast path)" if fast else "torch")
    return {"model": str(student.model_folder), "folds": list(student.checkpoints), "runtime": runtime,
            "onnx": str(request.onnx) if request.onnx else None,
            "device": device.type, "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor() or None, "step_size": request.step_size,
            "mirroring": not request.disable_tta and bool(predictor.allowed_mirroring_axes),
            "fast_path": fast.record() if fast else None, **record}
