"""What every launcher shares: the fold folder, the resume checks, the teacher check, nnU-Net's hand-over."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from nnkd.errors import NnkdError
from nnkd.teachers.fit import check_teacher_fits
from nnkd.trainers import EXT_TRAINER_FOLDER
from nnkd.trainers.run_config import SCHEDULE_KEYS

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


@dataclass(kw_only=True)
class ScheduledRequest:
    """Base of every launcher's request dataclass (nnkd_train, nnkd_train_lorkd, nnkd_distill): nnU-Net's schedule
    fields (SCHEDULE_KEYS), declared once, keyword-only; None keeps the trainer's own value."""
    num_epochs: int | None = None
    num_iterations_per_epoch: int | None = None
    num_val_iterations_per_epoch: int | None = None

    @property
    def schedule(self) -> dict:
        """The schedule values given, by nnU-Net trainer attribute name, as teacher.json records them."""
        return {k: getattr(self, k) for k in SCHEDULE_KEYS if getattr(self, k)}


def use_nnkd_trainers() -> None:
    """Put nnkd's trainer folder on nnUNet_extTrainer (kept for DDP workers, which inherit it)."""
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if EXT_TRAINER_FOLDER not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([EXT_TRAINER_FOLDER, *current])


def fold_folder(results: Path, dataset_name: str, trainer_name: str, plans: str, configuration: str, fold) -> Path:
    return results / dataset_name / f"{trainer_name}__{plans}__{configuration}" / f"fold_{fold}"


def require_checkpoint(folder: Path, resume: bool, what: str = "training",
                       checkpoints: tuple[str, ...] = CHECKPOINTS) -> None:
    """`--c` needs a checkpoint to resume from, `--val` a final one to validate."""
    wanted = checkpoints if resume else checkpoints[:1]
    if not any((folder / c).is_file() for c in wanted):
        raise NnkdError(f"nothing to {'resume' if resume else 'validate'} in {folder}",
                        f"start the {what} without --c/--val" if resume else f"finish the {what} first")


SEED_MAX = 2 ** 32 - 1  # NumPy's RNG takes seeds up to here (run_config.seed_everything seeds all three RNGs)


def check_seed(seed: int | None) -> None:
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise NnkdError(f"--seed {seed} is outside 0…{SEED_MAX}", f"give a seed from 0 to {SEED_MAX}")


def check_resume(started: dict, given: dict, what: str = "run", exact: bool = False, remedy: str | None = None) -> None:
    """The one resume check: an option given again on `--c` must have the value the run was started with.
    `given` maps option names to values (None or empty: not given); a flag (bool) only needs to match.
    `exact`: every option must equal the recorded value, a default (None) included — whether a finished run
    may be reused for a request."""
    remedy = remedy or f"drop {{option}} when resuming, or start a new {what}"
    for option, value in given.items():
        recorded = started[option]
        if exact:
            if _comparable(value) != _comparable(recorded):
                raise NnkdError(f"this {what} was started with {option} {_shown(recorded)}, not {_shown(value)}",
                                remedy.format(option=option))
            continue
        if value is None or value == () or value == [] or value == {}:
            continue
        if isinstance(value, bool):
            if value and not recorded:
                raise NnkdError(f"this {what} was started without {option}", remedy.format(option=option))
            continue
        if value != recorded:
            raise NnkdError(f"this {what} was started with {option} {_shown(recorded)}, not {_shown(value)}",
                            remedy.format(option=option))


def _comparable(value):
    """A value as its JSON record holds it (tuples become lists), for comparing a request with a record."""
    return json.loads(json.dumps(value))


def _shown(value) -> str:
    if value is None:
        return "(the default)"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def checked_teacher_record(spec: str, config, fold, needs_logits: bool, user: str, dataset: str | None = None):
    """Load the teacher once on the CPU and check it fits the preprocessed configuration `config`
    (nnkd.plans.PreprocessedConfiguration), before anything is written for the run; the teacher.json entry."""
    from nnkd.teachers.registry import create_teacher

    teacher = create_teacher(spec, fold=fold, device="cpu")
    check_teacher_fits(teacher, config.plans_manager, config.configuration, config.dataset_json, needs_logits, user)
    from nnkd.trainers.run_config import TeacherEntry

    return TeacherEntry(spec, teacher.checkpoint_path, teacher.checkpoint_sha256, dataset=dataset)


def run_nnunet_training(dataset_name: str, configuration: str, fold, trainer: str, plans: str, **kwargs) -> None:
    """nnU-Net's own run_training (single process or DDP, --c, --val, final validation) with nnkd's trainers."""
    use_nnkd_trainers()
    from nnunetv2.run.run_training import run_training

    run_training(dataset_name, configuration, fold, trainer, plans, **kwargs)


def validation_dice(folder: Path) -> float | None:
    """The fold's final validation Dice from nnU-Net's summary.json, None before validation."""
    summary = folder / "validation" / "summary.json"
    return json.loads(summary.read_text())["foreground_mean"]["Dice"] if summary.is_file() else None
