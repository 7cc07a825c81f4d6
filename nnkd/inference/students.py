"""Finding a trained student's model folder and loading its folds safely."""

import json
from dataclasses import dataclass
from pathlib import Path

from nnkd.errors import NnkdError
from nnkd.nnunet_env import find_dataset_name, require_env
from nnkd.planners.student_planner import DEFAULT_TEACHER_PLANS, resolve_student_plans
from nnkd.teachers.checkpoint import load_checkpoint


def find_model_folder(dataset, configuration: str, plans: str, method: str | None = None,
                      trainer: str | None = None) -> tuple[str, Path]:
    """(dataset name, model folder) of the trained student; `method` may be omitted when one matches."""
    results = require_env("nnUNet_results")["nnUNet_results"]
    dataset_name = find_dataset_name(dataset)
    if trainer is None and method is not None:
        from nnkd.trainers.methods import METHODS

        if method not in METHODS:
            raise NnkdError(f"unknown method '{method}'", f"use one of {', '.join(METHODS)} (or -tr CLASS)")
        trainer = METHODS[method].__name__
    pattern = f"{trainer or '*'}__{plans}__{configuration}"
    candidates = sorted(p for p in (results / dataset_name).glob(pattern)
                        if p.is_dir() and (p / "plans.json").is_file() and any(p.glob("fold_*/teacher.json")))
    if not candidates:
        raise NnkdError(f"no trained student {pattern} in {results / dataset_name}",
                        "train it first with nnkd_train (or check --budget/-p, -c and --method)")
    if len(candidates) > 1:
        names = ", ".join(p.name.split("__")[0] for p in candidates)
        raise NnkdError(f"several trained students match ({names})", "pick one with --method (or -tr)")
    return dataset_name, candidates[0]


def fold_checkpoints(model_folder: Path, folds, checkpoint_name: str = "checkpoint_final.pth") -> dict:
    """fold -> checkpoint path; `folds` None means every fold that has the checkpoint (not fold_all)."""
    if not folds:
        found = sorted(p.parent.name[len("fold_"):] for p in model_folder.glob(f"fold_*/{checkpoint_name}"))
        folds = [f for f in found if f != "all"] or found
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


def read_model_folder(model_folder: Path) -> tuple[dict, dict]:
    """(plans, dataset.json) of a model folder."""
    return (json.loads((model_folder / "plans.json").read_text()),
            json.loads((model_folder / "dataset.json").read_text()))


def load_student_weights(checkpoints: dict) -> tuple[list[dict], dict]:
    """Student weights of each fold (weights_only load) and the first fold's checkpoint."""
    loaded = [load_checkpoint(path) for path in checkpoints.values()]
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


@dataclass
class LocatedStudent:
    dataset_name: str
    model_folder: Path
    plans: dict
    dataset_json: dict
    checkpoints: dict  # fold -> checkpoint path


def locate(ref: StudentRef) -> LocatedStudent:
    """Resolve plans, model folder and fold checkpoints, with one clear error for each missing piece."""
    plans_name = resolve_student_plans(ref.budget, ref.plans, ref.teacher_plans)
    dataset_name, folder = find_model_folder(ref.dataset, ref.configuration, plans_name, ref.method, ref.trainer)
    plans, dataset_json = read_model_folder(folder)
    return LocatedStudent(dataset_name, folder, plans, dataset_json,
                          fold_checkpoints(folder, ref.folds, ref.checkpoint))
