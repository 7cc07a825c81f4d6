"""nnkd_export: a stock nnU-Net model folder (and optionally a zip and ONNX files) holding only the student."""

import copy
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from nnkd.atomic import remove_stale_temporaries, replace_folder, write_json_atomic
from nnkd.errors import NnkdError
from nnkd.outputs import (MANIFEST, OutputLock, carry_foreign, check_output, check_sibling, files_under, own_files,
                          write_manifest)
from nnkd.inference.students import LocatedStudent, StudentRef, load_student_checkpoints, locate_tasks
from nnkd.models.lorkd import TASK_FOLDER
from nnkd.run_names import split_run_trainer_name

STOCK_TRAINER = "nnUNetTrainer"


@dataclass
class ExportRequest:
    student: StudentRef
    output: Path
    zip: bool = False
    onnx: bool = False
    int8: bool = False  # also an ONNX Runtime int8 model per fold (static QDQ quantization), checked on validation
    overwrite: bool = False
    command: str = "nnkd_export"  # whose output OUT is (nnkd_distill exports into its own)


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
    """`folder` (without nnkd's manifest) as the zip file `zip_path`; on failure nothing is left."""
    try:
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path.name != MANIFEST:
                    archive.write(path, f"{arcroot}/{path.relative_to(folder)}")
    except BaseException:
        zip_path.unlink(missing_ok=True)
        raise


def export(request: ExportRequest) -> Path:
    """Write the student's stock model folder to `request.output`; a LoRKD student with --task all gets one
    folder per task inside it, OUTPUT/<dataset>. The output appears complete or not at all. An earlier output of
    the same command is replaced (`overwrite`), files nnkd did not write there are kept (nnkd.outputs)."""
    students = locate_tasks(request.student)
    model_folder = students[0].model_folder
    output = _checked_output(request, model_folder.resolve())
    per_task = request.student.task == "all"
    folders = {s.dataset_name: output / s.dataset_name if per_task else output for s in students}
    zips = [folder.with_suffix(".zip") for folder in folders.values()] if request.zip else []
    for zip_path in zips:
        check_sibling(zip_path, output, "--zip's archive")
    calibration = _calibration_sets(students) if request.int8 else {}

    with OutputLock(output, request.command):
        own = own_files(output) if output.is_dir() else set()
        staging = output.parent / f".{output.name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        remove_stale_temporaries(output.parent / f".{output.name}")  # staging of an export killed before
        for zip_path in zips:
            remove_stale_temporaries(zip_path.parent / f".{zip_path.name}")
        pending = []  # (zip written before the swap, where it goes after it)
        try:
            staging.mkdir(parents=True)
            for student in students:
                write_model_folder(student, staging / student.dataset_name if per_task else staging, request.onnx,
                                   calibration.get(student.dataset_name))
            for student in students if request.zip else []:  # zipped before the swap: OUT and OUT.zip appear together
                zip_path = folders[student.dataset_name].with_suffix(".zip")
                inside = zip_path.parent != output.parent
                written = staging / zip_path.relative_to(output) if inside else \
                    zip_path.with_name(f".{zip_path.name}.tmp-{os.getpid()}")
                arcroot = f"{student.dataset_name}/{STOCK_TRAINER}__{exported_plans_name(student)}__" \
                          f"{student.configuration}"
                _zip_folder(staging / student.dataset_name if per_task else staging, written, arcroot)
                if not inside:
                    pending.append((written, zip_path))
            write_manifest(staging, request.command,
                           files_under(staging) + [os.path.relpath(z, output) for z in zips])
            replace_folder(staging, output, carry=lambda old, new: carry_foreign(old, new, own))
            for written, zip_path in pending:
                os.replace(written, zip_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            for written, _ in pending:
                written.unlink(missing_ok=True)
        for student in students:
            _print_exported(student, model_folder, folders[student.dataset_name], request.zip)
    return output


def _checked_output(request: ExportRequest, source: Path) -> Path:
    """-o, resolved and checked before anything is written: a folder, not the student's own, and nnkd's to
    (re)write (nnkd.outputs); --int8 only with --onnx."""
    output = Path(request.output).expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise NnkdError(f"{output} is a file", "give a folder for -o")
    if output == source or source in output.parents or output in source.parents:
        raise NnkdError(f"{output} is (inside) or holds the trained student's folder {source}",
                        "export elsewhere: the training results are never modified")
    output = check_output(output, request.command, inputs=[source], overwrite=request.overwrite)
    if request.int8 and not request.onnx:
        raise NnkdError("--int8 quantizes the exported ONNX model", "add --onnx")
    return output


def _print_exported(student: LocatedStudent, model_folder: Path, folder: Path, zipped: bool) -> None:
    task = f" task {student.task}" if student.task else ""
    print(f"Exported {model_folder.name}{task} folds {', '.join(student.checkpoints)} to {folder} (plans "
          f"{exported_plans_name(student)}, trainer {STOCK_TRAINER}); run it with: "
          f"nnUNetv2_predict_from_modelfolder -m {folder} -i IN -o OUT")
    if zipped:
        zip_path = folder.with_suffix(".zip")
        print(f"Wrote {zip_path}; install with nnUNetv2_install_pretrained_model_from_zip {zip_path}")


def exported_plans_name(student: LocatedStudent) -> str:
    """The student plans name plus the method and run name, so students of different methods and runs install
    side by side."""
    run_name = split_run_trainer_name(student.model_folder.name.split("__")[0])[1]
    return f"{student.plans['plans_name']}-{student.method}" + (f"-{run_name}" if run_name else "")


def _calibration_sets(students: list[LocatedStudent]) -> dict:
    """dataset name -> fold -> (data folder, training cases, validation cases), found before anything is
    written; onnxruntime's quantization tools must be importable."""
    from nnkd.inference.quantize import fold_cases, require_quantization

    require_quantization()
    return {s.dataset_name: {fold: fold_cases(s.dataset_name, s.plans, s.configuration, fold)
                              for fold in s.checkpoints} for s in students}


def write_model_folder(student: LocatedStudent, folder: Path, onnx: bool, calibration: dict | None = None) -> None:
    """plans.json, dataset.json, fingerprint and fold checkpoints of a stock nnU-Net model folder (and ONNX)."""
    from nnkd.plans import network_from_plans, num_input_channels

    plans, dataset_json, configuration = student.plans, student.dataset_json, student.configuration
    exported = copy.deepcopy(plans)
    exported["plans_name"] = exported_plans_name(student)
    channels = num_input_channels(plans, configuration, dataset_json)
    files = student.model_folder / TASK_FOLDER / student.task if student.task else student.model_folder
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "plans.json", exported)
    write_json_atomic(folder / "dataset.json", dataset_json)
    shutil.copyfile(files / "dataset_fingerprint.json", folder / "dataset_fingerprint.json")
    network = network_from_plans(plans, configuration, dataset_json, allow_init=False)
    checkpoints = load_student_checkpoints(student)
    for fold, source in checkpoints.items():
        network.load_state_dict(source["network_weights"], strict=True)  # student keys only, exactly
        (folder / f"fold_{fold}").mkdir()
        torch.save(stock_checkpoint(source, exported, configuration, fold, dataset_json),
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
        if onnx:
            from nnkd.inference.onnx_export import export_onnx, onnx_sidecar

            name = "student.onnx" if len(checkpoints) == 1 else f"student_fold{fold}.onnx"
            error = export_onnx(network, channels, network_patch_size(plans, configuration), folder / name)
            write_json_atomic(folder / f"{name}.json", onnx_sidecar(plans, configuration, dataset_json, channels,
                                                                     source.get("inference_allowed_mirroring_axes")))
            print(f"{name}: max |ONNX Runtime − torch| on a random batch of two patches: {error:.2e}")
            if error > 1e-3:
                print(f"warning: {name} differs from torch by {error:.2e}")
            if calibration:
                write_int8(student, folder, name, calibration[fold], source.get("inference_allowed_mirroring_axes"))


def write_int8(student: LocatedStudent, folder: Path, name: str, cases: tuple, mirror_axes) -> None:
    """NAME.int8.onnx beside NAME (static QDQ quantization calibrated on the fold's training patches) with its
    JSON: the float model's sidecar plus how it was quantized and its Dice against the float model's."""
    import json

    from nnkd.inference.quantize import (CALIBRATION_SEED, QUANTIZED_OPS, calibration_patches, compare_on_validation,
                                         quantize_student)

    data_folder, train, val = cases
    int8_name = name.replace(".onnx", ".int8.onnx")
    patches = calibration_patches(data_folder, train, network_patch_size(student.plans, student.configuration))
    kept_float = quantize_student(folder / name, folder / int8_name, patches)
    check = compare_on_validation(student, {"float32": folder / name, "int8": folder / int8_name}, val, mirror_axes)
    sidecar = json.loads((folder / f"{name}.json").read_text())
    sidecar["quantization"] = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                               "weights": "int8, per output channel", "activations": "int8, per tensor",
                               "quantized_operators": list(QUANTIZED_OPS), "kept_float": kept_float,
                               "calibration": {"patches": len(patches), "cases": len(train), "seed": CALIBRATION_SEED,
                                               "data": str(data_folder)},
                               "validation": check}
    write_json_atomic(folder / f"{int8_name}.json", sidecar)
    if check.get("cases"):
        dice = check["dice"]
        print(f"{int8_name}: on {check['cases']} validation case(s), Dice float32 {dice['float32']:.4f}, int8 "
              f"{dice['int8']:.4f} ({(dice['int8'] - dice['float32']) * 100:+.2f} points); labels agree on "
              f"{check['label_agreement'] * 100:.2f} % of voxels")
    else:
        print(f"{int8_name}: no validation case with images and ground truth to compare on")


def network_patch_size(plans: dict, configuration: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans).get_configuration(configuration).patch_size
