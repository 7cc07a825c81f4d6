"""nnU-Net's fingerprint → teacher plans → preprocessing, plus the budget student plans.

Each step reuses nnU-Net's own functions and is skipped when its result is already there, so running
it again (e.g. for another budget) costs only the student search. `plan_from` gives other datasets the plans
of a planned one (nnU-Net's plan transfer), so that one student can train on all of them (LoRKD).
"""

import copy
import json
from pathlib import Path

from nnkd.atomic import write_bytes_atomic, write_json_atomic
from nnkd.errors import NnkdError
from nnkd.nnunet_env import find_dataset_name, raw_dataset_json, require_env
from nnkd.planners.budget import Budget
from nnkd.plans import DEFAULT_TEACHER_PLANS, PreprocessedConfiguration
from nnkd.planners.student_planner import (PlannedConfiguration, format_table,
                                           nnKDStudentPlanner, student_plans_identifier)

# Teacher plans nnkd can create itself, and nnU-Net's planner class for each.
TEACHER_PLANNERS = {
    DEFAULT_TEACHER_PLANS: "ExperimentPlanner",
    "nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM",
    "nnUNetResEncUNetLPlans": "nnUNetPlannerResEncL",
    "nnUNetResEncUNetXLPlans": "nnUNetPlannerResEncXL",
}
DEFAULT_CONFIGURATIONS = ("3d_fullres", "2d")


def _dataset_id(dataset_name: str) -> int:
    return int(dataset_name[len("Dataset"):len("Dataset") + 3])


def ensure_fingerprint(dataset_name: str, preprocessed: Path, num_processes: int, verify_integrity: bool) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    if verify_integrity:
        try:
            verify_dataset_integrity(str(require_env("nnUNet_raw")["nnUNet_raw"] / dataset_name), num_processes)
        except (AssertionError, RuntimeError) as e:
            raise NnkdError(f"{dataset_name} fails nnU-Net's integrity check: {str(e).strip().splitlines()[0]}",
                            "fix the raw dataset (see nnU-Net's dataset_format.md)") from e
    if not (preprocessed / "dataset_fingerprint.json").is_file():
        extract_fingerprint_dataset(_dataset_id(dataset_name), num_processes=num_processes, clean=False)


def ensure_teacher_plans(dataset_name: str, preprocessed: Path, teacher_plans: str) -> None:
    if (preprocessed / f"{teacher_plans}.json").is_file():
        return
    if teacher_plans not in TEACHER_PLANNERS:
        raise NnkdError(f"teacher plans {teacher_plans}.json not found in {preprocessed}",
                        f"create them with nnU-Net first, or use one of {', '.join(TEACHER_PLANNERS)}")
    import nnunetv2
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    planner_class = recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "experiment_planning"),
                                                TEACHER_PLANNERS[teacher_plans], "nnunetv2.experiment_planning")
    plan_experiment_dataset(_dataset_id(dataset_name), planner_class)


def is_preprocessed(preprocessed: Path, data_identifier: str, raw_dataset: Path) -> bool:
    """True when every training case of the raw dataset has its preprocessed files."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    folder = preprocessed / data_identifier
    if not folder.is_dir():
        return False
    dataset_json = raw_dataset_json(raw_dataset)
    for case in get_filenames_of_train_images_and_targets(str(raw_dataset), dataset_json):
        has_data = (folder / f"{case}.b2nd").is_file() and (folder / f"{case}_seg.b2nd").is_file() \
            or (folder / f"{case}.npz").is_file()
        if not (has_data and (folder / f"{case}.pkl").is_file()):
            return False
    return True


def resolve_configurations(requested, available) -> list[str]:
    if not requested:
        return [c for c in DEFAULT_CONFIGURATIONS if c in available]
    unknown = [c for c in requested if c not in available]
    if unknown:
        raise NnkdError(f"unknown configuration {', '.join(unknown)}",
                        f"this dataset's plans have {', '.join(available)}")
    return list(dict.fromkeys(requested))


def plan_and_preprocess(dataset, budget: Budget, configurations=None, teacher_plans: str = DEFAULT_TEACHER_PLANS,
                        num_processes: int = 4, verify_integrity: bool = False,
                        preprocess: bool = True) -> tuple[Path, list[PlannedConfiguration]]:
    """Plan the teacher as nnU-Net does (if not yet done), the student to `budget`, and preprocess."""
    paths = require_env("nnUNet_raw", "nnUNet_preprocessed")
    dataset_name = find_dataset_name(dataset)
    raw_dataset = paths["nnUNet_raw"] / dataset_name
    preprocessed = paths["nnUNet_preprocessed"] / dataset_name
    if not raw_dataset.is_dir() and not (preprocessed / f"{teacher_plans}.json").is_file():
        raise NnkdError(f"{dataset_name} is not in {paths['nnUNet_raw']}", "put the raw dataset there first")

    if raw_dataset.is_dir():
        ensure_fingerprint(dataset_name, preprocessed, num_processes, verify_integrity)
        ensure_teacher_plans(dataset_name, preprocessed, teacher_plans)

    student_planner = nnKDStudentPlanner(preprocessed, budget, teacher_plans)
    teacher_configurations = student_planner.teacher_plans["configurations"]
    chosen = resolve_configurations(configurations, list(teacher_configurations))
    plans_file, planned = student_planner.run(required=chosen)
    print(f"\nStudent plans ({budget.name}) for {dataset_name}, paired with {teacher_plans}:")
    print(format_table(planned))
    print(f"Saved {plans_file}\n")
    note = speed_note(budget, planned)
    if note:
        print(note + "\n")

    if preprocess:
        if not raw_dataset.is_dir():
            raise NnkdError(f"{dataset_name} is not in {paths['nnUNet_raw']}",
                            "preprocessing needs the raw dataset; pass --no_pp to plan only")
        preprocess_missing(dataset_name, student_planner.teacher_plans, teacher_plans, chosen, num_processes)
    return plans_file, planned


def ensure_planned(dataset_name: str, budget: Budget, configuration: str, teacher_plans: str = DEFAULT_TEACHER_PLANS,
                   num_processes: int | None = None, command: str = "nnkd") -> str:
    """The student plans of `budget` for one configuration, planned and preprocessed first (plan_and_preprocess, in
    this process) unless both are there: the one "is it planned?" check of the commands that plan for the user
    (nnkd_distill, nnkd_benchmark), so that their reruns plan nothing again. Returns the plans identifier."""
    plans = student_plans_identifier(budget, teacher_plans)
    try:
        PreprocessedConfiguration.load(dataset_name, plans, configuration, need_data=True)
        print(f"{command}: {plans} {configuration} is planned and preprocessed, skipping planning")
    except NnkdError:
        if num_processes is None:
            from nnunetv2.configuration import default_num_processes
            num_processes = default_num_processes
        plan_and_preprocess(dataset_name, budget, configurations=[configuration], teacher_plans=teacher_plans,
                            num_processes=num_processes)
    return plans


def speed_note(budget: Budget, planned: list[PlannedConfiguration]) -> str | None:
    """A parameter limit alone bounds the student's size, not its speed: say what it costs per patch."""
    if budget.max_params is None or budget.max_gflops is not None:
        return None
    costs = ", ".join(f"{p.name} {p.student.cost.gflops:.2f} of the teacher's {p.teacher.gflops:.2f} "
                      f"({p.student.cost.gflops / p.teacher.gflops:.2f}×)" for p in planned)
    return (f"nnkd: note: --max-params bounds the student's size, not its speed: GFLOPs per patch {costs}; "
            "add --max-gflops G to bound the compute too")


def preprocess_missing(dataset_name: str, teacher_plans: dict, teacher_plans_name: str, configurations,
                       num_processes: int) -> None:
    """nnU-Net's preprocessing of each configuration whose preprocessed cases are not all there yet."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    paths = require_env("nnUNet_raw", "nnUNet_preprocessed")
    preprocessed = paths["nnUNet_preprocessed"] / dataset_name
    teacher_manager = PlansManager(teacher_plans)
    for configuration in configurations:
        identifier = teacher_manager.get_configuration(configuration).data_identifier
        if is_preprocessed(preprocessed, identifier, paths["nnUNet_raw"] / dataset_name):
            print(f"{configuration}: already preprocessed in {preprocessed / identifier}, skipping")
            continue
        preprocess_dataset(_dataset_id(dataset_name), teacher_plans_name, [configuration], [num_processes])


def _channel_normalizations(dataset_json: dict) -> list[str]:
    """The normalization nnU-Net picks for each input channel from its name (CT, zscore, …)."""
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

    channels = dataset_json.get("channel_names", dataset_json.get("modality", {}))
    return [get_normalization_scheme(channels[k]).__name__ for k in sorted(channels, key=int)]


def _transferred_plans(plans: dict, target: str, raw_dataset: Path, source: str) -> dict:
    """`plans` for dataset `target`, as nnUNetv2_move_plans_between_datasets makes them: the same spacing, patch
    size, normalization and architecture, with the target's dataset_name and image reader."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    dataset_json = raw_dataset_json(raw_dataset)
    cases = get_filenames_of_train_images_and_targets(str(raw_dataset), dataset_json)
    if not cases:
        raise NnkdError(f"{raw_dataset} has no training cases", "add the training cases to the raw dataset")
    example = next(iter(cases.values()))["images"][0]
    reader = determine_reader_writer_from_dataset_json(dataset_json, example, allow_nonmatching_filename=True,
                                                       verbose=False)
    transferred = copy.deepcopy(plans)
    transferred["dataset_name"] = target
    transferred["image_reader_writer"] = reader.__name__
    if "nnkd" in transferred:  # the student plans record where they came from
        transferred["nnkd"]["plans_from"] = source
    return transferred


def _check_targets(raw_root: Path, source_name: str, others: list[str], expected: list[str]) -> None:
    """Every target of a plan transfer, before any is written: its raw data there, and input channels normalized
    as the source's."""
    for name in others:
        raw = raw_root / name
        if not (raw / "dataset.json").is_file():
            raise NnkdError(f"{name} is not in {raw_root}",
                            "the plan transfer extracts the target's fingerprint and preprocesses it: put the raw "
                            "dataset there first")
        found = _channel_normalizations(raw_dataset_json(raw))
        if len(found) != len(expected):
            raise NnkdError(f"{name} has {len(found)} input channel(s), {source_name} has {len(expected)}",
                            "--plans-from needs datasets with the same input channels")
        if found != expected:
            raise NnkdError(f"the channels of {name} are normalized as {', '.join(found)}, those of {source_name} "
                            f"as {', '.join(expected)}", "--plans-from needs channels of the same kind (CT with CT)")


def plan_from(source, targets, budget: Budget, configurations=None, teacher_plans: str = DEFAULT_TEACHER_PLANS,
              num_processes: int = 4, verify_integrity: bool = False, preprocess: bool = True) -> list[Path]:
    """Give each target dataset the source dataset's teacher and student plans (nnU-Net's plan transfer), so
    that their patches mix in one batch (LoRKD); extract each target's fingerprint and preprocess it.

    A source listed among the targets is planned first as usual. Every target is checked (raw data, input
    channels and their normalization, plans of the same name it already has) before any is written.
    Returns the student plans files of the targets."""
    paths = require_env("nnUNet_raw", "nnUNet_preprocessed")
    source_name = find_dataset_name(source)
    target_names = list(dict.fromkeys(find_dataset_name(t) for t in targets))
    source_raw = paths["nnUNet_raw"] / source_name / "dataset.json"
    source_json_file = source_raw if source_raw.is_file() else \
        paths["nnUNet_preprocessed"] / source_name / "dataset.json"
    if not source_json_file.is_file():
        raise NnkdError(f"{source_name} has no dataset.json", "plan the source dataset first")
    others = [name for name in target_names if name != source_name]
    _check_targets(paths["nnUNet_raw"], source_name, others,
                   _channel_normalizations(json.loads(source_json_file.read_text())))

    if source_name in target_names:
        plan_and_preprocess(source_name, budget, configurations, teacher_plans, num_processes, verify_integrity,
                            preprocess)
    source_folder = paths["nnUNet_preprocessed"] / source_name
    student_plans = student_plans_identifier(budget, teacher_plans)
    sources = {}
    for plans_name in (teacher_plans, student_plans):
        if not (source_folder / f"{plans_name}.json").is_file():
            raise NnkdError(f"{source_name} has no {plans_name}.json to give",
                            f"plan it first: nnkd_plan_and_preprocess -d {source_name} --budget {budget.name}")
        sources[plans_name] = json.loads((source_folder / f"{plans_name}.json").read_text())
    chosen = resolve_configurations(configurations, list(sources[teacher_plans]["configurations"]))

    transfers = {}
    for name in others:
        for plans_name, plans in sources.items():
            transferred = _transferred_plans(plans, name, paths["nnUNet_raw"] / name, source_name)
            existing = paths["nnUNet_preprocessed"] / name / f"{plans_name}.json"
            if existing.is_file() and json.loads(existing.read_text()) != transferred:
                raise NnkdError(f"{name} already has its own {plans_name}.json, different from {source_name}'s",
                                f"to give it {source_name}'s plans, delete {existing} (and its preprocessed data) "
                                "first")
            transfers[name, plans_name] = transferred

    written = []
    for name in others:
        folder = paths["nnUNet_preprocessed"] / name
        ensure_fingerprint(name, folder, num_processes, verify_integrity)
        write_bytes_atomic(folder / "dataset.json", (paths["nnUNet_raw"] / name / "dataset.json").read_bytes())
        for plans_name in sources:
            write_json_atomic(folder / f"{plans_name}.json", transfers[name, plans_name])
        print(f"{name}: plans {', '.join(sources)} of {source_name} written to {folder}")
        if preprocess:
            preprocess_missing(name, transfers[name, teacher_plans], teacher_plans, chosen, num_processes)
        written.append(folder / f"{student_plans}.json")
    return written
