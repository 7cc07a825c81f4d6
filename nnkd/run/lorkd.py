"""What nnkd_train_lorkd does: check that the datasets were planned together, record tasks.json and
teacher.json, then hand over to nnU-Net's `run_training` with nnKDTrainer_LoRKD."""

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from nnkd.devices import resolve_device, validation_mirroring
from nnkd.errors import NnkdError
from nnkd.method_table import LORKD_METHOD, LORKD_TRAINER
from nnkd.models.lorkd import DEFAULT_ALPHA, DEFAULT_RANK, TASK_FOLDER, LoRKDTask, LoRKDTasks, TaskPlans, check_task_fits
from nnkd.nnunet_env import find_dataset_name, parse_fold, require_env
from nnkd.planners.student_planner import resolve_student_plans
from nnkd.outputs import OutputLock
from nnkd.plans import DEFAULT_TEACHER_PLANS, PreprocessedConfiguration
from nnkd.run.common import (ScheduledRequest, check_resume, checked_teacher_record, fold_folder, require_checkpoint,
                             run_nnunet_training)
from nnkd.trainers.lorkd import REPORT_FILES, nnKDTrainer_LoRKD
from nnkd.trainers.run_config import RunConfig


@dataclass
class LoRKDRequest(ScheduledRequest):
    datasets: tuple[str, ...]  # the first names the run's folder; expert order
    configuration: str
    fold: str
    budget: str | None = None
    plans: str | None = None
    teacher_plans: str = DEFAULT_TEACHER_PLANS
    teachers: tuple[tuple[str, str], ...] = ()  # (dataset ID or name, teacher spec) per --teacher
    rank: int | None = None  # None: DEFAULT_RANK, or the recorded value with --c
    alpha: float | None = None
    device: str | None = None
    continue_training: bool = False
    npz: bool = False


def task_configurations(request: LoRKDRequest, names: list[str], plans_name: str) -> list[PreprocessedConfiguration]:
    """Each task's student plans, checked to share the first task's preprocessing and architecture."""
    configs = []
    for name in names:
        hint = f"-d {name}" if name == names[0] else f"-d {name} --plans-from {names[0]}"
        configs.append(PreprocessedConfiguration.load(name, plans_name, None,
                                                      hint=f"plan first: nnkd_plan_and_preprocess {hint} --budget …"))
    tasks = [TaskPlans(c.dataset_name, c.plans, c.dataset_json) for c in configs]
    for task in tasks:
        check_task_fits(tasks[0], task, request.configuration)
    return [dataclasses.replace(c, configuration=request.configuration) for c in configs]


def teacher_specs(request: LoRKDRequest, names: list[str]) -> dict[str, str]:
    """dataset name -> teacher spec; each --teacher must name one of the datasets being trained, once."""
    specs = {}
    for given, spec in request.teachers:
        name = find_dataset_name(given)
        if name not in names:
            raise NnkdError(f"--teacher {given}=… names {name}, which is not one of -d {' '.join(request.datasets)}",
                            "give a teacher only for the datasets being trained")
        if name in specs:
            raise NnkdError(f"two --teacher for {name}", "give at most one teacher per dataset")
        specs[name] = spec
    return specs


def check_other_folds(folder: Path, names: list[str]) -> None:
    """Every fold of a LoRKD model trains the same tasks in the same order."""
    from nnkd.models.lorkd import TASKS_FILE

    for other in sorted(folder.parent.glob(f"fold_*/{TASKS_FILE}")):
        recorded = LoRKDTasks.load(other.parent)
        if other.parent != folder and recorded.datasets != names:
            raise NnkdError(f"{other.parent.name} of {folder.parent} was trained on {', '.join(recorded.datasets)}",
                            "train every fold of a LoRKD model on the same -d list, in the same order")


def resume(request: LoRKDRequest, folder: Path, names: list[str], teachers: dict[str, str]) -> None:
    """Check the resumed run was started with what the request gives again; extend its schedule."""
    recorded, existing = LoRKDTasks.load(folder), RunConfig.load(folder)
    if recorded is None or existing is None:
        raise NnkdError(f"nothing to resume in {folder}", "start the training without --c")
    require_checkpoint(folder, True)
    if existing.method != LORKD_METHOD:
        raise NnkdError(f"{folder} holds a {existing.method} run, not LoRKD", "start a new run without --c")
    check_resume({"-d": recorded.datasets, "--rank": recorded.rank, "--alpha": recorded.alpha,
                  "--teacher": {e.dataset: e.spec for e in existing.teachers or []}},
                 {"-d": names, "--rank": request.rank, "--alpha": request.alpha, "--teacher": teachers})
    existing.schedule.update(request.schedule)
    existing.save(folder)


def start(request: LoRKDRequest, folder: Path, configs: list[PreprocessedConfiguration], teachers: dict[str, str],
          fold) -> None:
    """tasks.json and teacher.json of a new run, each teacher loaded once on the CPU and checked."""
    records = [checked_teacher_record(teachers[c.dataset_name], c, fold, True, f"method {LORKD_METHOD}",
                                      dataset=c.dataset_name)
               for c in configs if c.dataset_name in teachers]
    record = LoRKDTasks(
        tasks=[LoRKDTask(c.dataset_name, dict(c.dataset_json["labels"]), teachers.get(c.dataset_name)) for c in configs],
        rank=request.rank if request.rank is not None else DEFAULT_RANK,
        alpha=float(request.alpha) if request.alpha is not None else DEFAULT_ALPHA)
    run = RunConfig(method=LORKD_METHOD, trainer=LORKD_TRAINER, teachers=records,
                    hyperparameters=nnKDTrainer_LoRKD.default_settings(), schedule=request.schedule)
    shutil.rmtree(folder / TASK_FOLDER, ignore_errors=True)  # a new run replaces an old run's validation
    for name in REPORT_FILES:
        (folder / name).unlink(missing_ok=True)
    record.save(folder)
    run.save(folder)


def train_lorkd(request: LoRKDRequest) -> Path:
    """Check the tasks, record tasks.json and teacher.json, train (or resume) one fold; return its folder."""
    paths = require_env("nnUNet_preprocessed", "nnUNet_results")
    names = [find_dataset_name(d) for d in request.datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise NnkdError(f"-d lists {', '.join(repeated)} more than once", "give each dataset once")
    fold = parse_fold(request.fold)
    plans_name = resolve_student_plans(request.budget, request.plans, request.teacher_plans)
    configs = task_configurations(request, names, plans_name)
    teachers = teacher_specs(request, names)
    device = resolve_device(request.device)
    validation_mirroring()  # a bad nnkd_val_mirroring stops before anything is written
    folder = fold_folder(paths["nnUNet_results"], names[0], LORKD_TRAINER, plans_name, request.configuration, fold)
    check_other_folds(folder, names)
    with OutputLock(folder, "nnkd_train_lorkd"):  # one command at a time trains a run's fold
        if request.continue_training:
            resume(request, folder, names, teachers)
        else:
            start(request, folder, configs, teachers, fold)
        run_nnunet_training(names[0], request.configuration, fold, LORKD_TRAINER, plans_name,
                            export_validation_probabilities=request.npz, continue_training=request.continue_training,
                            device=device)
    report = folder / REPORT_FILES[0]
    if report.is_file():
        for entry in json.loads(report.read_text())["tasks"]:
            print(f"nnkd: LoRKD {plans_name} {request.configuration} fold {fold}, task {entry['dataset']}: "
                  f"validation Dice {entry['dice']:.4f}")
        print(f"nnkd: per-task report {folder / REPORT_FILES[1]}")
    return folder
