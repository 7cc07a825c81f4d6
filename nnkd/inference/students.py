"""Finding a trained student's model folder and loading its folds safely.

A LoRKD student (nnkd_train_lorkd) serves several tasks: `--task` picks one, and the student is that task's
stock network, its low-rank experts fused into plain convolutions, with the task's own plans and dataset.json.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from nnkd.errors import NnkdError
from nnkd.folds import numbered_or_all, read_model_folder, trained_folds
from nnkd.nnunet_env import find_dataset_name, require_env
from nnkd.planners.student_planner import resolve_student_plans
from nnkd.plans import DEFAULT_TEACHER_PLANS
from nnkd.run_names import run_trainer_name, split_run_trainer_name, trainer_run_folders
from nnkd.checkpoints import load_checkpoint
from nnkd.method_table import ALL_METHOD_TRAINERS, LORKD_METHOD, LORKD_TRAINER
from nnkd.models.lorkd import TASK_FOLDER, LoRKDTasks, build_multi_task_network


def find_model_folder(dataset, configuration: str, plans: str, method: str | None = None,
                      trainer: str | None = None, run_name: str | None = None) -> tuple[str, Path]:
    """(dataset name, model folder) of the trained student; `method` and `run_name` may be omitted when one
    run matches."""
    results = require_env("nnUNet_results")["nnUNet_results"]
    dataset_name = find_dataset_name(dataset)
    if trainer is None and method is not None:
        if method not in ALL_METHOD_TRAINERS:
            raise NnkdError(f"unknown method '{method}'", f"use one of {', '.join(ALL_METHOD_TRAINERS)} (or -tr CLASS)")
        trainer = ALL_METHOD_TRAINERS[method]
    if trainer is not None:
        trainer, from_trainer = split_run_trainer_name(trainer)
        run_name = run_name or from_trainer
    pattern = f"{run_trainer_name(trainer or '*', run_name)}__{plans}__{configuration}"
    candidates = [p for p in trainer_run_folders(results / dataset_name, trainer, plans, configuration, run_name)
                  if (p / "plans.json").is_file() and any(p.glob("fold_*/teacher.json"))]
    if not candidates:
        raise NnkdError(f"no trained student {pattern} in {results / dataset_name}",
                        "a LoRKD student is filed under the first dataset of nnkd_train_lorkd -d: give that as -d and "
                        "the task as --task" if trainer == LORKD_TRAINER else
                        "train it first with nnkd_train (or check --budget/-p, -c and --method)")
    if len(candidates) > 1:
        names = ", ".join(p.name.split("__")[0] for p in candidates)
        raise NnkdError(f"several trained students match ({names})",
                        "pick one with --method and --run-name (the part after '@')")
    return dataset_name, candidates[0]


def fold_checkpoints(model_folder: Path, folds, checkpoint_name: str = "checkpoint_final.pth") -> dict:
    """fold -> checkpoint path; `folds` None means every fold that has the checkpoint (not fold_all)."""
    if not folds:
        folds = numbered_or_all(trained_folds(model_folder, checkpoint_name))
        if not folds:
            raise NnkdError(f"no fold of {model_folder} has {checkpoint_name}", "finish the training first")
    paths = {}
    for fold in folds:
        path = model_folder / f"fold_{fold}" / checkpoint_name
        if not path.is_file():
            raise NnkdError(f"fold {fold} of {model_folder.name} has no {checkpoint_name}",
                            "finish that fold's training or choose other folds with -f")
        paths[str(fold)] = path
    return paths


def run_method(model_folder: Path) -> str:
    """The method a model folder's run was trained with, from its teacher.json."""
    return json.loads(next(model_folder.glob("fold_*/teacher.json")).read_text())["method"]


def load_student_checkpoints(student: "LocatedStudent") -> dict[str, dict]:
    """fold -> checkpoint (weights_only load); for a LoRKD task, `network_weights` are the task's fused stock
    weights (W0 + (α/r)·B_t A_t in every convolution, the task's heads)."""
    loaded = {fold: load_checkpoint(path) for fold, path in student.checkpoints.items()}
    if student.task is None:
        return loaded
    for fold, checkpoint in loaded.items():
        record = LoRKDTasks.load(student.checkpoints[fold].parent)
        network = build_multi_task_network(student.plans, student.configuration, student.dataset_json, record)
        network.load_state_dict(checkpoint["network_weights"])
        checkpoint["network_weights"] = network.fused(record.find(student.task)).state_dict()
    return loaded


def load_student_weights(student: "LocatedStudent") -> tuple[list[dict], dict]:
    """Student weights of each fold and the first fold's checkpoint."""
    loaded = list(load_student_checkpoints(student).values())
    return [c["network_weights"] for c in loaded], loaded[0]


@dataclass
class StudentRef:
    """Which trained student a command is pointed at (nnkd_predict, nnkd_export)."""
    dataset: str
    configuration: str
    folds: list[str] | None = None
    budget: str | None = None
    plans: str | None = None
    teacher_plans: str = DEFAULT_TEACHER_PLANS
    method: str | None = None
    trainer: str | None = None
    checkpoint: str = "checkpoint_final.pth"
    task: str | None = None  # LoRKD students: the task's dataset ID or name (nnkd_export also takes "all")
    run_name: str | None = None  # the run (`<trainer>@<run name>`); may be omitted when one run matches


@dataclass
class LocatedStudent:
    dataset_name: str  # for a LoRKD task: the task's dataset
    model_folder: Path
    plans: dict  # for a LoRKD task: the task's plans and dataset.json
    dataset_json: dict
    checkpoints: dict  # fold -> checkpoint path
    configuration: str
    method: str
    task: str | None = None  # LoRKD: the task's dataset name; its experts are fused when the weights are loaded


def locate(ref: StudentRef) -> LocatedStudent:
    """Resolve plans, model folder and fold checkpoints, with one clear error for each missing piece."""
    students = locate_tasks(ref)
    if len(students) > 1:
        raise NnkdError("--task all is for nnkd_export", "pick one task with --task")
    return students[0]


def locate_tasks(ref: StudentRef) -> list[LocatedStudent]:
    """The student `ref` points at: one, or for a LoRKD run with --task all one per task."""
    plans_name = resolve_student_plans(ref.budget, ref.plans, ref.teacher_plans)
    dataset_name, folder = find_model_folder(ref.dataset, ref.configuration, plans_name, ref.method, ref.trainer,
                                             ref.run_name)
    checkpoints = fold_checkpoints(folder, ref.folds, ref.checkpoint)
    method = run_method(folder)
    if method != LORKD_METHOD:
        if ref.task is not None:
            raise NnkdError(f"--task picks a task of a LoRKD student, but {folder.name} was trained with method "
                            f"{method}", "drop --task, or point at a LoRKD run with --method lorkd")
        plans, dataset_json = read_model_folder(folder)
        return [LocatedStudent(dataset_name, folder, plans, dataset_json, checkpoints, ref.configuration, method)]
    records = {fold: LoRKDTasks.load(path.parent) for fold, path in checkpoints.items()}
    for fold, record in records.items():
        if record is None:
            raise NnkdError(f"fold {fold} of {folder.name} has no tasks.json", "train it with nnkd_train_lorkd")
    first = next(iter(records.values()))
    if any(record.datasets != first.datasets for record in records.values()):
        raise NnkdError(f"the folds {', '.join(records)} of {folder.name} were trained on different tasks",
                        "pick folds trained on the same tasks with -f")
    if ref.task is None:
        raise NnkdError(f"{folder.name} is a LoRKD student of {len(first.datasets)} tasks "
                        f"({', '.join(first.datasets)})", "pick one with --task DATASET")
    names = first.datasets if ref.task == "all" else [first.datasets[first.find(ref.task)]]
    located = []
    for name in names:
        plans, dataset_json = read_model_folder(folder / TASK_FOLDER / name)
        located.append(LocatedStudent(name, folder, plans, dataset_json, checkpoints, ref.configuration, method,
                                      task=name))
    return located
