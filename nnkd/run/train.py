"""What nnkd_train does: resolve the student plans and trainer, record teacher.json, then hand over to
nnU-Net's own `run_training` (single process or DDP, `--c`, `--val`, `--npz`, final validation)."""

from dataclasses import asdict, dataclass, field
from pathlib import Path

from nnkd.devices import resolve_device, validation_mirroring
from nnkd.errors import NnkdError
from nnkd.method_table import LORKD_METHOD, LORKD_TRAINER
from nnkd.nnunet_env import parse_fold, require_env
from nnkd.outputs import OutputLock
from nnkd.planners.student_planner import resolve_student_plans
from nnkd.plans import DEFAULT_TEACHER_PLANS
from nnkd.plans import PreprocessedConfiguration
from nnkd.run.common import (CHECKPOINTS, ScheduledRequest, check_resume, check_seed,
                             checked_teacher_record, fold_folder,
                             require_checkpoint, run_nnunet_training, use_nnkd_trainers, validation_dice)
from nnkd.records import software_versions
from nnkd.run_names import (derived_run_name, run_name_problem, run_trainer_name, split_run_trainer_name,
                            trainer_run_folders)
from nnkd.trainers.run_config import RunConfig, TeacherEntry


@dataclass
class TrainRequest(ScheduledRequest):
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
    cache_variant: str | None = None  # which cache of the teacher (its settings, e.g. "top2-half"); None: the one
    labeled: int | None = None
    unlabeled: str | None = None  # a folder of NIfTI images for TS-KD's transfer set
    synthetic: str | None = None  # a transfer-set folder (nnkd_synthesize)
    hyperparameters: dict = field(default_factory=dict)
    seed: int | None = None
    device: str | None = None
    continue_training: bool = False
    validation_only: bool = False
    npz: bool = False
    num_gpus: int = 1
    run_name: str | None = None  # default: derived from the teacher and settings (nnkd.run_names)

    @property
    def resuming(self) -> bool:
        return self.continue_training or self.validation_only

    def to_json(self) -> dict:
        """The request as JSON, for a training process of its own (`python -m nnkd.cli.train_worker FILE`)."""
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> "TrainRequest":
        return cls(**{**values, "teachers": tuple(values.get("teachers") or ())})


def resolve_trainer_class(method: str | None, trainer: str | None):
    from nnkd.trainers.methods import METHODS
    from nnkd.trainers.nnkd_trainer import nnKDTrainer

    trainer = split_run_trainer_name(trainer)[0] if trainer else trainer
    if (method is None) == (trainer is None):
        raise NnkdError("give exactly one of --method and -tr", f"methods: {', '.join(METHODS)}")
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


def cached_teacher_record(spec: str, cls, config: PreprocessedConfiguration, fold, settings: dict,
                          variant: str | None = None) -> dict:
    """The run's teacher as its stored predictions: the cache must exist and fit; the teacher is not loaded."""
    from nnkd.cache.compute import fold_training_cases
    from nnkd.cache.store import TeacherCache

    if cls.uses_teacher_features(settings):
        raise NnkdError(f"method {cls.method} needs live teacher features; a teacher cache holds only the "
                        "teacher's predictions", cls.without_teacher_features)
    cache = TeacherCache(_cache_of(spec, config, fold, variant))
    if not cache.manifest or not cache.entries():
        raise NnkdError(f"no teacher cache of {spec} for fold {fold} in {cache.folder}",
                        f"run nnkd_cache_teacher -d {config.dataset_name} -c {config.configuration} -f {fold} "
                        f"--teacher '{spec}' first")
    # every training case of the fold (a part of a split cache may still be at work), each intact and current:
    # a missing, truncated or stale case stops here, before teacher.json
    cache.check(fold_training_cases(config.folder, config.data_folder, fold), spec)
    labels = config.dataset_json["labels"]
    if cache.manifest["labels"] != labels:
        raise NnkdError(f"the teacher cache in {cache.folder} holds labels {cache.manifest['labels']}, the dataset "
                        f"has {labels}", "cache a teacher of this dataset's labels")
    return TeacherEntry(spec, cache.manifest.get("checkpoint"), cache.manifest.get("teacher_sha256"),
                        cache=str(cache.folder))


def _cache_of(spec: str, config: PreprocessedConfiguration, fold, variant: str | None) -> Path:
    """The cache folder of `spec` for the fold: of the variant asked for; else the default settings' where they
    are cached, else the one variant there is (several: the user chooses)."""
    from nnkd.cache.store import CacheSettings, cache_folder, cache_variants

    data_identifier = config.configuration_manager.data_identifier
    if variant is not None:
        return cache_folder(config.folder, data_identifier, fold, spec, CacheSettings.from_variant(variant))
    found = cache_variants(config.folder, data_identifier, fold, spec)
    if "" in found or len(found) <= 1:
        return found.get("", next(iter(found.values()), cache_folder(config.folder, data_identifier, fold, spec)))
    raise NnkdError(f"{spec} has {len(found)} teacher caches for fold {fold}, with settings "
                    f"{', '.join(sorted(found))}", f"choose one with --cache-variant {sorted(found)[0]}")


def transfer_sets(request: TrainRequest, config: PreprocessedConfiguration) -> list[str]:
    """The run's transfer-set folders: `--unlabeled` images preprocessed into nnkd's own folder, and the
    `--synthetic` set, each checked to hold cases with the dataset's channels."""
    from nnkd.trainers.transfer_batches import check_transfer_set

    folders = []
    if request.unlabeled:
        from nnkd.datasets.transfer import add_unlabeled

        folders.append(add_unlabeled(config.dataset_name, Path(request.unlabeled), plans=config.plans_name,
                                     configuration=request.configuration))
    if request.synthetic:
        folders.append(Path(request.synthetic))
    for folder in folders:
        check_transfer_set(Path(folder), config.num_channels)
    return [str(f) for f in folders]


def check_request(request: TrainRequest, cls) -> None:
    """What the request asks that the method cannot do, before anything is read or written."""
    if request.continue_training and request.validation_only:
        raise NnkdError("--c and --val together", "use --c to resume training or --val to only validate")
    if len(request.teachers) > 1 and not cls.takes_several_teachers:
        raise NnkdError(f"method {cls.method} distils one teacher, {len(request.teachers)} --teacher were given",
                        "give one --teacher, or use --method multiteacher for several")
    if request.teacher_cache and len(request.teachers) > 1:
        raise NnkdError("--teacher-cache serves one teacher's predictions, several --teacher were given",
                        "give one --teacher with --teacher-cache")
    if request.cache_variant is not None:
        if not request.teacher_cache:
            raise NnkdError(f"--cache-variant {request.cache_variant} chooses a teacher cache, and --teacher-cache "
                            "was not given", "add --teacher-cache, or drop --cache-variant")
        from nnkd.cache.store import CacheSettings

        CacheSettings.from_variant(request.cache_variant)  # a name that is no variant stops here
    if (request.unlabeled or request.synthetic) and not cls.takes_transfer_set:
        raise NnkdError(f"method {cls.method} has no transfer set; --unlabeled and --synthetic feed TS-KD's",
                        "use --method tskd")
    if (request.unlabeled or request.synthetic) and request.teacher_cache:
        raise NnkdError("a teacher cache holds the fold's training cases only, not --unlabeled or --synthetic sets",
                        "drop --teacher-cache to distil those sets with the live teacher, or keep the cache and "
                        "--labeled N alone (the fold's other training cases are the transfer set)")
    check_seed(request.seed)
    if request.labeled is not None and request.labeled < 1:
        raise NnkdError(f"--labeled {request.labeled} keeps no labelled case", "give --labeled 1 or more")
    if not request.resuming:
        if request.teacher_cache and not request.teachers:
            raise NnkdError("--teacher-cache needs --teacher SPEC, the spec the cache was made for",
                            "pass the same --teacher as to nnkd_cache_teacher")
        if cls.needs_teacher and not request.teachers:
            raise NnkdError(f"method {cls.method} needs a teacher", "pass --teacher nnunet:MODEL_FOLDER")


def resumed_record(request: TrainRequest, cls, folder: Path, existing: RunConfig | None, given: dict) -> RunConfig:
    """teacher.json of the run being resumed (or validated), checked against what the request gives again."""
    require_checkpoint(folder, request.continue_training)
    existing = existing or RunConfig(method=cls.method, trainer=cls.__name__)
    recorded = existing.teacher_specs
    check_resume({"teacher": recorded, "--seed": existing.seed, "--labeled": existing.labeled,
                  "--unlabeled/--synthetic": bool(existing.transfer),
                  "--teacher-cache": not recorded or existing.reads_cache},
                 {"teacher": list(request.teachers) if recorded else None, "--seed": request.seed,
                  "--labeled": request.labeled, "--unlabeled/--synthetic": bool(request.unlabeled or request.synthetic),
                  "--teacher-cache": request.teacher_cache})
    existing.schedule.update(request.schedule)
    existing.hyperparameters.update(given)
    return existing


def new_record(request: TrainRequest, cls, config: PreprocessedConfiguration, fold, given: dict) -> RunConfig:
    """teacher.json of a new run: its teacher(s) loaded once and checked, every hyper-parameter on record."""
    spec = request.teachers[0] if request.teachers else None
    user = f"method {cls.method}"
    teacher, teachers = None, None
    if spec and not cls.needs_teacher:
        print(f"note: method {cls.method} trains without a teacher; --teacher is ignored")
    elif request.teacher_cache:
        teacher = cached_teacher_record(spec, cls, config, fold, cls.default_settings() | given, request.cache_variant)
    elif cls.takes_several_teachers:
        teachers = [checked_teacher_record(s, config, fold, cls.needs_teacher_logits, user) for s in request.teachers]
    elif spec:
        teacher = checked_teacher_record(spec, config, fold, cls.needs_teacher_logits, user)
    return RunConfig(method=cls.method, trainer=cls.__name__, teacher=teacher, teachers=teachers,
                     hyperparameters=cls.default_settings() | given, schedule=request.schedule,
                     labeled=request.labeled, transfer=transfer_sets(request, config) or None, seed=request.seed,
                     versions=software_versions())


def requested_run_name(request: TrainRequest, cls, given: dict) -> str | None:
    """`--run-name` (or the run part of `-tr TRAINER@NAME`), checked, else the name derived from the teacher(s),
    cached or online, --labeled, the transfer set, the --hp given and --seed."""
    from_trainer = split_run_trainer_name(request.trainer)[1] if request.trainer else None
    if from_trainer and request.run_name and from_trainer != request.run_name:
        raise NnkdError(f"-tr {request.trainer} names run '{from_trainer}', --run-name says '{request.run_name}'",
                        "give the run name once")
    name = request.run_name or from_trainer
    if name is not None:
        problem = run_name_problem(name)
        if problem:
            raise NnkdError(f"run name '{name}' cannot name a folder: {problem}", "choose another --run-name")
        return name
    teachers = list(request.teachers) if cls.needs_teacher else []
    return derived_run_name(teachers, cached=request.teacher_cache and bool(teachers), labeled=request.labeled,
                            transfer=[t for t in (request.unlabeled, request.synthetic) if t],
                            hyperparameters=given, seed=request.seed)


def locate_run(results: Path, dataset_name: str, cls, plans: str, request: TrainRequest, fold,
               given: dict) -> tuple[str, Path]:
    """(nnU-Net trainer name, fold folder) of the run. A new run gets its own folder; `--c`/`--val` without the
    options that name the run resume the one run of this trainer, plans, configuration and fold there is."""
    name = requested_run_name(request, cls, given)
    trainer = run_trainer_name(cls.__name__, name)
    folder = fold_folder(results, dataset_name, trainer, plans, request.configuration, fold)
    explicit = request.run_name or (request.trainer and split_run_trainer_name(request.trainer)[1])
    if not request.resuming:
        if any((folder / c).is_file() for c in CHECKPOINTS):
            raise NnkdError(f"run {trainer} fold {fold} already has checkpoints in {folder}",
                            "resume it with --c, validate it with --val, or start another run with --run-name NAME")
        return trainer, folder
    if explicit or (folder / RunConfig.FILE).is_file():
        return trainer, folder
    runs = [f / f"fold_{fold}" for f in trainer_run_folders(results / dataset_name, cls.__name__, plans,
                                                              request.configuration)
            if (f / f"fold_{fold}" / RunConfig.FILE).is_file()]
    if len(runs) > 1:
        raise NnkdError(f"several runs of {cls.__name__} {plans} {request.configuration} fold {fold} "
                        f"({', '.join(split_run_trainer_name(r.parent.name.split('__')[0])[1] or '(unnamed)' for r in runs)})"
                        " and none matches the options given", "pick one with --run-name NAME")
    if runs:
        trainer = runs[0].parent.name.split("__")[0]
        print(f"nnkd: resuming run {trainer}")
        return trainer, runs[0]
    return trainer, folder


def _resolved(request: TrainRequest):
    """(nnUNet_results, fold, student plans name, preprocessed configuration, trainer class, hyper-parameters given)."""
    paths = require_env("nnUNet_preprocessed", "nnUNet_results")
    fold = parse_fold(request.fold)
    plans = resolve_student_plans(request.budget, request.plans, request.teacher_plans)
    config = PreprocessedConfiguration.load(
        request.dataset, plans, request.configuration,
        hint=f"plan first: nnkd_plan_and_preprocess -d {request.dataset} --budget {request.budget or '…'}")
    cls = resolve_trainer_class(request.method, request.trainer)
    check_request(request, cls)
    given = cls.coerce_settings(request.hyperparameters)
    return paths["nnUNet_results"], fold, plans, config, cls, given


def new_run_folder(request: TrainRequest) -> Path:
    """The fold folder `train(request)` starts a new run in (nothing is checked beyond the request, nothing
    written): where a launcher looks to see whether the run is done, started or new."""
    results, fold, plans, config, cls, given = _resolved(request)
    trainer = run_trainer_name(cls.__name__, requested_run_name(request, cls, given))
    return fold_folder(results, config.dataset_name, trainer, plans, request.configuration, fold)


def train(request: TrainRequest) -> Path:
    """Train (or resume, or validate) one fold; return its output folder."""
    results, fold, plans, config, cls, given = _resolved(request)
    validation_mirroring()  # a bad nnkd_val_mirroring stops before anything is written
    trainer, folder = locate_run(results, config.dataset_name, cls, plans, request, fold, given)
    existing = RunConfig.load(folder) if request.resuming else None
    teachers = len(request.teachers) or (len(existing.teacher_entries) if existing else 0)
    cls.check_settings(cls.default_settings() | (existing.hyperparameters if existing else {}) | given,
                       teachers, config.encoder_stages)
    record = resumed_record(request, cls, folder, existing, given) if request.resuming else \
        new_record(request, cls, config, fold, given)
    with OutputLock(folder, "nnkd_train"):  # one command at a time trains a run's fold
        record.save(folder)
        print(f"nnkd: run folder {folder}")
        run_nnunet_training(config.dataset_name, request.configuration, fold, trainer, plans,
                            num_gpus=request.num_gpus, export_validation_probabilities=request.npz,
                            continue_training=request.continue_training, only_run_validation=request.validation_only,
                            device=resolve_device(request.device))
    dice = validation_dice(folder)
    if dice is not None:
        print(f"nnkd: {trainer} {plans} {request.configuration} fold {fold}: validation Dice {dice:.4f} "
              f"({folder / 'validation' / 'summary.json'})")
    return folder
