"""What nnkd_tune_teacher does: check the request, record tuning.json, then hand over to nnU-Net's
`run_training` with nnKDTeacherTuner (TS-KD step 1)."""

from dataclasses import dataclass, replace
from pathlib import Path

from nnkd.devices import resolve_device
from nnkd.errors import NnkdError
from nnkd.nnunet_env import parse_fold, require_env
from nnkd.outputs import OutputLock
from nnkd.plans import PreprocessedConfiguration
from nnkd.records import software_versions
from nnkd.run.common import check_resume, fold_folder, require_checkpoint, run_nnunet_training, validation_dice
from nnkd.teachers.tuned import TUNED_FILE, TUNED_FOLDER, add_lora
from nnkd.trainers.tune import TuningConfig, check_tunable, nnKDTeacherTuner, record_validation_dice


@dataclass
class TuneRequest:
    dataset: str
    configuration: str
    fold: str
    tuning: TuningConfig  # base_spec: the teacher to tune (None only with continue_training)
    plans: str = "nnUNetPlans"
    device: str | None = None
    continue_training: bool = False


def start(request: TuneRequest, config: PreprocessedConfiguration, folder: Path, fold) -> None:
    """tuning.json of a new tuning, after loading the base teacher once on the CPU and checking it fits."""
    from nnkd.teachers.registry import create_teacher

    wanted = request.tuning
    if wanted.labeled is not None and wanted.labeled < 1:
        raise NnkdError(f"--labeled {wanted.labeled} keeps no labelled case", "give --labeled 1 or more")
    teacher = create_teacher(wanted.base_spec, fold=fold, device="cpu")
    if not teacher.lora_targets:
        add_lora(teacher, wanted.lora_rank, wanted.lora_alpha)  # raises the clear error
    check_tunable(teacher, config.num_channels, len(config.configuration_manager.patch_size),
                  f"{config.dataset_name} ({request.configuration})")
    replace(wanted, base_checkpoint=teacher.checkpoint_path, base_sha256=teacher.checkpoint_sha256,
            versions=software_versions()).save(folder)


def tune(request: TuneRequest) -> Path:
    """Check the request, record tuning.json, run nnU-Net's training and validation; return the fold folder."""
    paths = require_env("nnUNet_preprocessed", "nnUNet_results")
    fold = parse_fold(request.fold)
    config = PreprocessedConfiguration.load(request.dataset, request.plans, request.configuration)
    wanted = request.tuning
    for name, value in (("--lora-rank", wanted.lora_rank), ("--head-hidden", wanted.head_hidden)):
        if value < 1:
            raise NnkdError(f"{name} {value} must be at least 1", f"give a positive {name}")
    folder = fold_folder(paths["nnUNet_results"], config.dataset_name, nnKDTeacherTuner.__name__, request.plans,
                         request.configuration, fold)
    if request.continue_training:
        existing = TuningConfig.load(folder)
        if existing is None:
            raise NnkdError(f"nothing to resume in {folder}", "start the tuning without --c")
        require_checkpoint(folder, True, "tuning", ("checkpoint_latest.pth", "checkpoint_final.pth"))
        check_resume({"teacher": existing.base_spec, "--seed": existing.seed},
                     {"teacher": wanted.base_spec, "--seed": wanted.seed}, what="tuning")
    with OutputLock(folder, "nnkd_tune_teacher"):  # one command at a time tunes a fold
        if request.continue_training:
            existing.schedule.update(wanted.schedule)
            existing.save(folder)
        else:
            start(request, config, folder, fold)
        run_nnunet_training(config.dataset_name, request.configuration, fold, nnKDTeacherTuner.__name__,
                            request.plans, continue_training=request.continue_training,
                            device=resolve_device(request.device))
    dice = validation_dice(folder)
    if dice is not None and (folder / TUNED_FOLDER / TUNED_FILE).is_file():
        record_validation_dice(folder, dice)
        print(f"nnkd: tuned teacher tuned:{folder} — validation Dice {dice:.4f}")
    return folder
