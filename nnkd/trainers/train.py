"""What nnkd_train does: resolve the student plans and trainer, record teacher.json, then hand over to
nnU-Net's own `run_training` (single process or DDP, `--c`, `--val`, `--npz`, final validation)."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from nnkd.devices import resolve_device
from nnkd.errors import NnkdError
from nnkd.nnunet_env import find_dataset_name, require_env
from nnkd.planners.student_planner import DEFAULT_TEACHER_PLANS, resolve_student_plans
from nnkd.trainers import EXT_TRAINER_FOLDER
from nnkd.trainers.run_config import RunConfig, software_versions

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


@dataclass
class TrainRequest:
    dataset: str
    configuration: str
    fold: str
    method: str | None = None
    trainer: str | None = None
    budget: str | None = None
    plans: str | None = None
    teacher_plans: str = DEFAULT_TEACHER_PLANS
    teachers: tuple[str, ...] = ()  # teacher specs; methods other than multiteacher take one
    teacher_cache: bool = False
    labeled: int | None = None
    unlabeled: str | None = None  # a folder of NIfTI images for TS-KD's transfer set
    synthetic: str | None = None  # a transfer-set folder (nnkd_synthesize)
    hyperparameters: dict = field(default_factory=dict)
    seed: int | None = None
    num_epochs: int | None = None
    num_iterations_per_epoch: int | None = None
    num_val_iterations_per_epoch: int | None = None
    device: str | None = None
    continue_training: bool = False
    validation_only: bool = False
    npz: bool = False
    num_gpus: int = 1


def use_nnkd_trainers() -> None:
    """Put nnkd's trainer folder on nnUNet_extTrainer (kept for DDP workers, which inherit it)."""
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if EXT_TRAINER_FOLDER not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([EXT_TRAINER_FOLDER, *current])


def resolve_trainer_class(method: str | None, trainer: str | None):
    from nnkd.trainers.methods import METHODS
    from nnkd.trainers.nnkd_trainer import nnKDTrainer

    if (method is None) == (trainer is None):
        raise NnkdError("give exactly one of --method and -tr", f"methods: {', '.join(METHODS)}")
    from nnkd.trainers.lorkd_model import LORKD_METHOD, LORKD_TRAINER

    if method == LORKD_METHOD or trainer == LORKD_TRAINER:
        raise NnkdError("LoRKD trains one student on several datasets at once", "use nnkd_train_lorkd -d A B C …")
    if method is not None:
        if method not in METHODS:
            raise NnkdError(f"unknown method '{method}'", f"use one of {', '.join(METHODS)} (or -tr CLASS)")
        return METHODS[method]
    use_nnkd_trainers()
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        cls = recursive_find_trainer_class_by_name(trainer)
    except (RuntimeError, AssertionError) as e:
        raise NnkdError(f"trainer class '{trainer}' not found", "put its folder on nnUNet_extTrainer") from e
    if not issubclass(cls, nnKDTrainer):
        raise NnkdError(f"{trainer} is not an nnKDTrainer subclass", "use nnUNetv2_train for stock trainers")
    return cls


def parse_fold(fold: str):
    if fold == "all":
        return fold
    if fold.isdigit():
        return int(fold)
    raise NnkdError(f"fold '{fold}' is invalid", "use 0-4 or all")


def checked_teacher_record(spec: str, cls, plans_file: Path, configuration: str, fold) -> dict:
    """Load the teacher once on the CPU and check it fits, before anything is written for the run."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnkd.teachers.registry import create_teacher
    from nnkd.trainers.nnkd_trainer import check_teacher_fits

    dataset_json = json.loads((plans_file.parent / "dataset.json").read_text())
    teacher = create_teacher(spec, fold=fold, device="cpu")
    check_teacher_fits(teacher, cls, PlansManager(str(plans_file)), configuration, dataset_json)
    return {"spec": spec, "checkpoint": teacher.checkpoint_path, "sha256": teacher.checkpoint_sha256}


def cached_teacher_record(spec: str, cls, plans_file: Path, configuration: str, fold) -> dict:
    """The run's teacher as its stored predictions: the cache must exist and fit; the teacher is not loaded."""
    from nnkd.cache.store import TeacherCache, cache_folder

    if cls.needs_teacher_features:
        raise NnkdError(f"method {cls.method} needs live teacher features; a teacher cache holds only the "
                        "teacher's predictions", "drop --teacher-cache, or use a logit-based method (logit)")
    plans = json.loads(plans_file.read_text())
    data_identifier = plans["configurations"][configuration]["data_identifier"]
    cache = TeacherCache(cache_folder(plans_file.parent, data_identifier, fold, spec))
    if not cache.manifest.get("cases"):
        raise NnkdError(f"no teacher cache of {spec} for fold {fold} in {cache.folder}",
                        f"run nnkd_cache_teacher -d {plans_file.parent.name} -c {configuration} -f {fold} "
                        f"--teacher '{spec}' first")
    labels = json.loads((plans_file.parent / "dataset.json").read_text())["labels"]
    if cache.manifest["labels"] != labels:
        raise NnkdError(f"the teacher cache in {cache.folder} holds labels {cache.manifest['labels']}, the dataset "
                        f"has {labels}", "cache a teacher of this dataset's labels")
    return {"spec": spec, "cache": str(cache.folder), "checkpoint": cache.manifest.get("checkpoint"),
            "sha256": cache.manifest.get("teacher_sha256")}


def transfer_sets(request: TrainRequest, dataset_name: str, plans: str, plans_file: Path) -> list[str]:
    """The run's transfer-set folders: `--unlabeled` images preprocessed into nnkd's own folder, and the
    `--synthetic` set, each checked to hold cases with the dataset's channels."""
    from nnkd.trainers.transfer_batches import check_transfer_set

    channels = len(json.loads((plans_file.parent / "dataset.json").read_text())["channel_names"])
    folders = []
    if request.unlabeled:
        from nnkd.datasets.transfer import add_unlabeled

        folders.append(add_unlabeled(dataset_name, Path(request.unlabeled), plans=plans,
                                     configuration=request.configuration))
    if request.synthetic:
        folders.append(Path(request.synthetic))
    for folder in folders:
        check_transfer_set(Path(folder), channels)
    return [str(f) for f in folders]


def fold_folder(results: Path, dataset_name: str, trainer_name: str, plans: str, configuration: str, fold) -> Path:
    return results / dataset_name / f"{trainer_name}__{plans}__{configuration}" / f"fold_{fold}"


def train(request: TrainRequest) -> Path:
    """Train (or resume, or validate) one fold; return its output folder."""
    paths = require_env("nnUNet_preprocessed", "nnUNet_results")
    dataset_name = find_dataset_name(request.dataset)
    fold = parse_fold(str(request.fold))
    plans = resolve_student_plans(request.budget, request.plans, request.teacher_plans)
    plans_file = paths["nnUNet_preprocessed"] / dataset_name / f"{plans}.json"
    if not plans_file.is_file():
        budget_hint = f"--budget {request.budget}" if request.budget else "--budget …"
        raise NnkdError(f"plans {plans_file} not found",
                        f"plan first: nnkd_plan_and_preprocess -d {request.dataset} {budget_hint}")
    configurations = json.loads(plans_file.read_text())["configurations"]
    if request.configuration not in configurations:
        raise NnkdError(f"unknown configuration '{request.configuration}'",
                        f"{plans} has {', '.join(configurations)}")
    if request.continue_training and request.validation_only:
        raise NnkdError("--c and --val together", "use --c to resume training or --val to only validate")

    cls = resolve_trainer_class(request.method, request.trainer)
    folder = fold_folder(paths["nnUNet_results"], dataset_name, cls.__name__, plans, request.configuration, fold)
    from nnkd.trainers.nnkd_trainer import coerce_hyperparameter
    given = {name: coerce_hyperparameter(cls, name, value) for name, value in request.hyperparameters.items()}
    schedule = {k: getattr(request, k) for k in ("num_epochs", "num_iterations_per_epoch",
                                                    "num_val_iterations_per_epoch") if getattr(request, k)}

    if len(request.teachers) > 1 and not cls.takes_several_teachers:
        raise NnkdError(f"method {cls.method} distils one teacher, {len(request.teachers)} --teacher were given",
                        "give one --teacher, or use --method multiteacher for several")
    if request.teacher_cache and len(request.teachers) > 1:
        raise NnkdError("--teacher-cache serves one teacher's predictions, several --teacher were given",
                        "give one --teacher with --teacher-cache")
    if (request.unlabeled or request.synthetic) and not cls.takes_transfer_set:
        raise NnkdError(f"method {cls.method} has no transfer set; --unlabeled and --synthetic feed TS-KD's",
                        "use --method tskd")
    spec = request.teachers[0] if request.teachers else None
    existing = RunConfig.load(folder)
    resumed = existing if existing and (request.continue_training or request.validation_only) else None
    cls.check_settings({name: getattr(cls, name) for name in cls.hyperparameters}
                       | (resumed.hyperparameters if resumed else {}) | given,
                       len(request.teachers) or len((resumed.teachers if resumed else None) or []))
    if request.continue_training or request.validation_only:
        wanted = CHECKPOINTS if request.continue_training else CHECKPOINTS[:1]
        if not any((folder / c).is_file() for c in wanted):
            raise NnkdError(f"nothing to {'resume' if request.continue_training else 'validate'} in {folder}",
                            "start the training without --c/--val" if request.continue_training
                            else "finish the training first")
        if existing is None:
            existing = RunConfig(method=cls.method, trainer=cls.__name__)
        recorded = [e["spec"] for e in existing.teachers or ([existing.teacher] if existing.teacher else [])]
        if request.teachers and recorded and list(request.teachers) != recorded:
            raise NnkdError(f"this run was started with teacher {' '.join(recorded)}, not {' '.join(request.teachers)}",
                            "drop --teacher when resuming, or start a new run")
        if request.seed is not None and request.seed != existing.seed:
            raise NnkdError(f"this run was started with --seed {existing.seed}, not {request.seed}",
                            "drop --seed when resuming, or start a new run")
        if request.labeled is not None and request.labeled != existing.labeled:
            raise NnkdError(f"this run was started with --labeled {existing.labeled}, not {request.labeled}",
                            "drop --labeled when resuming, or start a new run")
        if (request.unlabeled or request.synthetic) and not existing.transfer:
            raise NnkdError("this run was started without a transfer set",
                            "drop --unlabeled/--synthetic when resuming, or start a new run")
        if request.teacher_cache and recorded and not existing.teacher.get("cache"):
            raise NnkdError("this run was started with the live teacher, not --teacher-cache",
                            "drop --teacher-cache when resuming, or start a new run")
        existing.schedule.update(schedule)
        existing.hyperparameters.update(given)
        existing.save(folder)
    else:
        if request.teacher_cache and not spec:
            raise NnkdError("--teacher-cache needs --teacher SPEC, the spec the cache was made for",
                            "pass the same --teacher as to nnkd_cache_teacher")
        if cls.needs_teacher and not spec:
            raise NnkdError(f"method {cls.method} needs a teacher", "pass --teacher nnunet:MODEL_FOLDER")
        teacher, teachers = None, None
        if spec and not cls.needs_teacher:
            print(f"note: method {cls.method} trains without a teacher; --teacher is ignored")
        elif request.teacher_cache:
            teacher = cached_teacher_record(spec, cls, plans_file, request.configuration, fold)
        elif cls.takes_several_teachers:
            teachers = [checked_teacher_record(s, cls, plans_file, request.configuration, fold)
                        for s in request.teachers]
        elif spec:
            teacher = checked_teacher_record(spec, cls, plans_file, request.configuration, fold)
        effective = {name: getattr(cls, name) for name in cls.hyperparameters} | given  # defaults on record too
        if request.labeled is not None and request.labeled < 1:
            raise NnkdError(f"--labeled {request.labeled} keeps no labelled case", "give --labeled 1 or more")
        transfer = transfer_sets(request, dataset_name, plans, plans_file) or None
        RunConfig(method=cls.method, trainer=cls.__name__, teacher=teacher, teachers=teachers,
                  hyperparameters=effective, schedule=schedule, labeled=request.labeled,
                  transfer=transfer, seed=request.seed, versions=software_versions()).save(folder)

    device = resolve_device(request.device)
    use_nnkd_trainers()
    from nnunetv2.run.run_training import run_training

    run_training(dataset_name, request.configuration, fold, cls.__name__, plans, num_gpus=request.num_gpus,
                 export_validation_probabilities=request.npz, continue_training=request.continue_training,
                 only_run_validation=request.validation_only, device=device)
    summary = folder / "validation" / "summary.json"
    if summary.is_file():
        dice = json.loads(summary.read_text())["foreground_mean"]["Dice"]
        print(f"nnkd: {cls.__name__} {plans} {request.configuration} fold {fold}: validation Dice {dice:.4f} "
              f"({summary})")
    return folder
