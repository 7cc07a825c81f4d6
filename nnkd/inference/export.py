"""nnkd_export: a stock nnU-Net model folder (and optionally a zip and ONNX files) holding only the student."""

import copy
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from nnkd.atomic import replace_folder, write_json_atomic
from nnkd.errors import NnkdError
from nnkd.inference.students import StudentRef, locate
from nnkd.teachers.checkpoint import load_checkpoint

STOCK_TRAINER = "nnUNetTrainer"


@dataclass
class ExportRequest:
    student: StudentRef
    output: Path
    zip: bool = False
    onnx: bool = False
    overwrite: bool = False


def stock_checkpoint(source: dict, plans: dict, configuration: str, fold: str, dataset_json: dict) -> dict:
    """What nnU-Net's predictor reads from a checkpoint, with a stock trainer name and the student only."""
    return {
        "network_weights": source["network_weights"],
        "trainer_name": STOCK_TRAINER,
        "init_args": {"plans": plans, "configuration": configuration, "fold": fold, "dataset_json": dataset_json,
                      "device": "cpu"},
        "inference_allowed_mirroring_axes": source.get("inference_allowed_mirroring_axes"),
        "current_epoch": source.get("current_epoch"),
    }


def _zip_folder(folder: Path, zip_path: Path, arcroot: str) -> None:
    tmp = zip_path.with_name(f".{zip_path.name}.tmp-{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{arcroot}/{path.relative_to(folder)}")
    os.replace(tmp, zip_path)


def export(request: ExportRequest) -> Path:
    from nnkd.plans import network_from_plans, num_input_channels

    student = locate(request.student)
    plans, dataset_json, checkpoints = student.plans, student.dataset_json, student.checkpoints
    model_folder, configuration = student.model_folder, request.student.configuration
    output = Path(request.output).resolve()
    if output.exists() and not output.is_dir():
        raise NnkdError(f"{output} is a file", "give a folder for -o")
    source = model_folder.resolve()
    if output == source or source in output.parents or output in source.parents:
        raise NnkdError(f"{output} is (inside) or holds the trained student's folder {source}",
                        "export elsewhere: the training results are never modified")
    if output.exists() and any(output.iterdir()) and not request.overwrite:
        raise NnkdError(f"{output} exists and is not empty", "choose another -o or pass --overwrite")

    method = json.loads(next(model_folder.glob("fold_*/teacher.json")).read_text())["method"]
    exported = copy.deepcopy(plans)
    exported["plans_name"] = f"{plans['plans_name']}-{method}"
    channels = num_input_channels(plans, configuration, dataset_json)
    staging = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        write_json_atomic(staging / "plans.json", exported)
        write_json_atomic(staging / "dataset.json", dataset_json)
        shutil.copyfile(model_folder / "dataset_fingerprint.json", staging / "dataset_fingerprint.json")
        network = network_from_plans(plans, configuration, dataset_json, allow_init=False)
        for fold, path in checkpoints.items():
            source = load_checkpoint(path)
            network.load_state_dict(source["network_weights"], strict=True)  # student keys only, exactly
            (staging / f"fold_{fold}").mkdir()
            torch.save(stock_checkpoint(source, exported, configuration, fold, dataset_json),
                       staging / f"fold_{fold}" / "checkpoint_final.pth")
            if request.onnx:
                from nnkd.inference.onnx_export import export_onnx, onnx_sidecar

                name = "student.onnx" if len(checkpoints) == 1 else f"student_fold{fold}.onnx"
                error = export_onnx(network, channels, network_patch_size(plans, configuration),
                                    staging / name)
                write_json_atomic(staging / f"{name}.json",
                                  onnx_sidecar(plans, configuration, dataset_json, channels))
                print(f"{name}: max |ONNX Runtime − torch| on a random batch of two patches: {error:.2e}")
                if error > 1e-3:
                    print(f"warning: {name} differs from torch by {error:.2e}")
        replace_folder(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"Exported {model_folder.name} folds {', '.join(checkpoints)} to {output} (plans {exported['plans_name']}, "
          f"trainer {STOCK_TRAINER}); run it with: nnUNetv2_predict_from_modelfolder -m {output} -i IN -o OUT")
    if request.zip:
        zip_path = output.with_suffix(".zip")
        _zip_folder(output, zip_path,
                    f"{student.dataset_name}/{STOCK_TRAINER}__{exported['plans_name']}__{configuration}")
        print(f"Wrote {zip_path}; install with nnUNetv2_install_pretrained_model_from_zip {zip_path}")
    return output


def network_patch_size(plans: dict, configuration: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans).get_configuration(configuration).patch_size
