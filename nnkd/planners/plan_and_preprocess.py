"""nnU-Net's fingerprint → teacher plans → preprocessing, plus the budget student plans.

Each step reuses nnU-Net's own functions and is skipped when its result is already there, so running
it again (e.g. for another budget) costs only the student search.
"""

import json
from pathlib import Path

from nnkd.errors import NnkdError
from nnkd.nnunet_env import find_dataset_name, require_env
from nnkd.planners.budget import Budget
from nnkd.planners.student_planner import (DEFAULT_TEACHER_PLANS, PlannedConfiguration, format_table,
                                           nnKDStudentPlanner)

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
    dataset_json = json.loads((raw_dataset / "dataset.json").read_text())
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

    if preprocess:
        if not raw_dataset.is_dir():
            raise NnkdError(f"{dataset_name} is not in {paths['nnUNet_raw']}",
                            "preprocessing needs the raw dataset; pass --no_pp to plan only")
        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        teacher_manager = PlansManager(student_planner.teacher_plans)

        for configuration in chosen:
            identifier = teacher_manager.get_configuration(configuration).data_identifier
            if is_preprocessed(preprocessed, identifier, raw_dataset):
                print(f"{configuration}: already preprocessed in {preprocessed / identifier}, skipping")
                continue
            preprocess_dataset(_dataset_id(dataset_name), teacher_plans, [configuration], [num_processes])
    return plans_file, planned
