"""Run names: how nnkd keeps two runs of one trainer, plans and configuration apart.

nnU-Net files a run under `<trainer>__<plans>__<configuration>/fold_X`. nnkd files a run as
`<trainer class>@<run name>__<plans>__<configuration>/fold_X`: nnkd's trainer module serves the name
`<trainer class>@<run name>` as a subclass (nnkd/trainers/nnunet_ext/nnkd_trainers.py), so nnU-Net's own
run_training, its DDP workers and stock `nnUNetv2_train -tr` file and find the run in that folder. The run name is
`--run-name`, or derived from what makes the run different (teacher, cached or online, --labeled, the transfer
set, --hp, --seed); a run with none of these (the no-KD baseline, unseeded) keeps nnU-Net's plain name.
"""

import hashlib
from pathlib import Path

from nnkd.teacher_spec import TeacherSpec

RUN_SEPARATOR = "@"
RUN_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._=,+-")
MAX_RUN_NAME = 100


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot be a run name (None when it can): it becomes part of a folder name."""
    if not name:
        return "it is empty"
    if len(name) > MAX_RUN_NAME:
        return f"it is longer than {MAX_RUN_NAME} characters"
    bad = sorted(set(name) - RUN_NAME_CHARACTERS)
    if bad:
        return f"it contains {' '.join(repr(c) for c in bad)} (allowed: letters, digits and . _ = , + -)"
    if "__" in name or name.startswith(("-", ".")):
        return "it contains '__' or starts with '-' or '.'"
    return None


def run_trainer_name(trainer: str, run_name: str | None) -> str:
    """The trainer part of a run's folder name: `trainer` alone, or `trainer@run_name`."""
    return f"{trainer}{RUN_SEPARATOR}{run_name}" if run_name else trainer


def split_run_trainer_name(name: str) -> tuple[str, str | None]:
    """(trainer class, run name or None) of a folder's trainer part."""
    trainer, sep, run_name = name.partition(RUN_SEPARATOR)
    return trainer, (run_name if sep else None)


def short_hash(*texts: str) -> str:
    return hashlib.sha1("\n".join(texts).encode()).hexdigest()[:6]


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_value(v) for v in value)
    return str(value)


def _teacher_part(specs: list[str]) -> str:
    """Family names and a hash of the specs, the teacher's path resolved (a relative and an absolute path to one
    teacher are one teacher)."""
    parsed = [TeacherSpec.parse(spec) for spec in specs]
    canonical = [spec.canonical() for spec in parsed]
    families = "+".join(dict.fromkeys(spec.family for spec in parsed))
    return f"{families}{short_hash(*canonical)}"


def derived_run_name(teachers: list[str], cached: bool = False, labeled: int | None = None,
                     transfer: list[str] = (), hyperparameters: dict | None = None,
                     seed: int | None = None) -> str | None:
    """The default run name: what makes this run different, readable where it is short; None for a run with none of
    it. Hyper-parameters are those given (not the method's defaults), e.g.
    `nnunet3fa2c1-cached-l4-kd_temperature=4-s0`."""
    parts = [_teacher_part(list(teachers))] if teachers else []
    parts += ["cached"] if cached else []
    parts += [f"l{labeled}"] if labeled else []
    parts += [f"tr{short_hash(*(str(Path(t).expanduser().resolve()) for t in transfer))}"] if transfer else []
    hp = ",".join(f"{k}={_value(v)}" for k, v in sorted((hyperparameters or {}).items()))
    if hp:
        readable = "".join(c if c in RUN_NAME_CHARACTERS else "_" for c in hp).replace("__", "_")
        parts.append(readable if len(readable) <= 60 else f"hp{short_hash(hp)}")
    parts += [f"s{seed}"] if seed is not None else []
    return "-".join(parts) or None


def trainer_run_folders(dataset_folder: Path, trainer: str | None, plans: str, configuration: str,
                        run_name: str | None = None) -> list[Path]:
    """Every run folder `<trainer>[@<run>]__<plans>__<configuration>` in a dataset's results folder; `trainer`
    None: any trainer; `run_name` given: only that run."""
    if run_name is not None:
        patterns = [f"{trainer or '*'}{RUN_SEPARATOR}{run_name}__{plans}__{configuration}"]
    elif trainer is None:
        patterns = [f"*__{plans}__{configuration}"]
    else:
        patterns = [f"{trainer}__{plans}__{configuration}", f"{trainer}{RUN_SEPARATOR}*__{plans}__{configuration}"]
    found = {p for pattern in patterns for p in Path(dataset_folder).glob(pattern) if p.is_dir()}
    return sorted(found)
