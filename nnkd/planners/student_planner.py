"""nnKDStudentPlanner: student plans derived from the teacher plans JSON, architecture sized to a budget.

It reads the teacher plans file rather than re-running a planner, so every preprocessing key (spacing,
patch size, normalization, transpose, resampling, data identifier, batch size) is the teacher's byte for
byte, whatever planner or GPU-memory target produced them: the student trains on the data nnU-Net has
already preprocessed.
"""

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from nnkd import __version__
from nnkd.atomic import write_json_atomic
from nnkd.errors import NnkdError
from nnkd.plans import DEFAULT_TEACHER_PLANS, num_input_channels, num_segmentation_heads
from nnkd.planners.architecture_search import StudentArchitecture, StudentSearch
from nnkd.planners.budget import Budget
from nnkd.planners.network_cost import NetworkCost

STUDENT_KEY = "nnkd_student"  # per-configuration record of what the budget search chose


def student_plans_identifier(budget: Budget, teacher_plans: str = DEFAULT_TEACHER_PLANS) -> str:
    """nnKDPlans_<budget>, with the teacher plans appended when they are not nnU-Net's default."""
    suffix = "" if teacher_plans == DEFAULT_TEACHER_PLANS else f"-{teacher_plans}"
    return f"nnKDPlans_{budget.name}{suffix}"


def resolve_student_plans(budget: str | None, plans: str | None, teacher_plans: str = DEFAULT_TEACHER_PLANS) -> str:
    """The plans identifier named by --budget (with --teacher-plans) or given directly with -p."""
    if plans and budget:
        raise NnkdError("both -p and --budget given", "give one of them")
    if not plans and not budget:
        raise NnkdError("no student plans given", "pass --budget tiny|small|medium (or -p PLANS)")
    return plans or student_plans_identifier(Budget.from_name(budget), teacher_plans)


@dataclass(frozen=True)
class PlannedConfiguration:
    name: str
    teacher: NetworkCost
    student: StudentArchitecture
    param_limit: float
    gflop_limit: float
    latency_ms: float | None = None  # measured patch latency, with --max-latency


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NnkdError(f"cannot read {path}: {e}", "re-run nnU-Net planning for this dataset") from e


class nnKDStudentPlanner:
    """Writes nnKDPlans_<budget>.json beside the teacher plans in nnUNet_preprocessed/DatasetXXX_Name."""

    def __init__(self, preprocessed_dataset_folder: Path, budget: Budget, teacher_plans: str = DEFAULT_TEACHER_PLANS):
        self.folder = Path(preprocessed_dataset_folder)
        self.budget = budget
        self.teacher_plans_identifier = teacher_plans
        teacher_file = self.folder / f"{teacher_plans}.json"
        if not teacher_file.is_file():
            raise NnkdError(f"teacher plans {teacher_file} not found",
                            "plan the dataset first (nnkd_plan_and_preprocess or nnUNetv2_plan_experiment)")
        self.teacher_plans = _load_json(teacher_file)
        self.dataset_json = _load_json(self.folder / "dataset.json")

    @property
    def identifier(self) -> str:
        return student_plans_identifier(self.budget, self.teacher_plans_identifier)

    @property
    def plans_file(self) -> Path:
        return self.folder / f"{self.identifier}.json"

    def plan(self, required=()) -> tuple[dict, list[PlannedConfiguration]]:
        """Student plans for every teacher configuration. One the budget cannot serve is an error if it
        is in `required`, otherwise it is left out of the student plans with a note."""
        plans = copy.deepcopy(self.teacher_plans)
        plans["plans_name"] = self.identifier
        plans["experiment_planner_used"] = type(self).__name__
        plans["nnkd"] = {"version": __version__, "budget": self.budget.to_json(),
                         "teacher_plans": self.teacher_plans_identifier,
                         "teacher_planner": self.teacher_plans.get("experiment_planner_used")}
        num_classes = num_segmentation_heads(plans, self.dataset_json)
        planned = []
        for name, configuration in list(plans["configurations"].items()):
            if name not in plans["configurations"] or "architecture" not in configuration:
                continue  # inherits its architecture (e.g. 3d_cascade_fullres from 3d_fullres)
            search = StudentSearch(configuration["architecture"],
                                   num_input_channels(self.teacher_plans, name, self.dataset_json),
                                   num_classes, configuration["patch_size"])
            teacher = search.teacher_cost()
            param_limit, gflop_limit = self.budget.limits(teacher)
            latency = None
            try:
                problem = self.budget.shrink_problem(teacher)
                if problem is not None:
                    raise problem
                if self.budget.max_latency_ms is not None:
                    student, latency = self._fit_latency(search, param_limit, gflop_limit)
                else:
                    student = search.search(param_limit, gflop_limit)
            except NnkdError as e:
                if name in required:
                    raise NnkdError(f"configuration {name}: {e.problem}", e.remedy) from e
                print(f"note: {name} is left out of the student plans: {e.problem}")
                self._drop(plans, name)
                continue
            configuration["architecture"] = student.architecture
            configuration[STUDENT_KEY] = {
                "budget": self.budget.name,
                "teacher_plans": self.teacher_plans_identifier,
                "params": student.cost.params,
                "gflops_per_patch": round(student.cost.gflops, 4),
                "teacher_params": teacher.params,
                "teacher_gflops_per_patch": round(teacher.gflops, 4),
                "param_ratio": round(student.cost.params / teacher.params, 5),
                "gflop_ratio": round(student.cost.gflops / teacher.gflops, 5),
                "max_params": None if param_limit == float("inf") else int(param_limit),
                "max_gflops_per_patch": None if gflop_limit == float("inf") else round(gflop_limit, 4),
                "flops_counted_with": "torch.utils.flop_counter.FlopCounterMode, batch 1, no deep supervision",
            }
            if latency is not None:
                configuration[STUDENT_KEY] |= {"max_latency_ms": self.budget.max_latency_ms,
                                               "latency_ms": latency["ms"], "latency": latency["measured_on"]}
            planned.append(PlannedConfiguration(name, teacher, student, param_limit, gflop_limit,
                                                latency["ms"] if latency else None))
        return plans, planned

    def _fit_latency(self, search, param_limit: float, gflop_limit: float):
        """The largest student within the limits whose measured patch latency fits --max-latency."""
        from nnkd.planners.latency import REPEATS, WARMUP, LatencyCache, fit_latency, machine

        student, ms, tried, confirmations = fit_latency(search, param_limit, gflop_limit, self.budget,
                                                        LatencyCache(self.folder))
        return student, {"ms": ms, "measured_on": {
            "device": self.budget.latency_device, "runtime": self.budget.latency_runtime, **machine(),
            "what": f"one patch, batch 1, median of {REPEATS} after {WARMUP} warm-up runs, measured again after "
                    "the search" + ("; in each way nnkd_predict's fast path may run it, the fastest"
                                    if self.budget.latency_runtime == "fast" else ""),
            "candidates_measured": len(tried), "confirmations": confirmations}}

    @staticmethod
    def _drop(plans: dict, name: str) -> None:
        """Remove a configuration and those that inherit from or cascade after it."""
        configurations = plans["configurations"]
        configurations.pop(name)
        for other, entry in list(configurations.items()):
            if entry.get("inherits_from") == name or entry.get("previous_stage") == name:
                nnKDStudentPlanner._drop(plans, other)
            elif entry.get("next_stage") == name:
                entry.pop("next_stage")

    def run(self, required=()) -> tuple[Path, list[PlannedConfiguration]]:
        plans, planned = self.plan(required)
        write_json_atomic(self.plans_file, plans)
        return self.plans_file, planned


def format_table(planned: list[PlannedConfiguration]) -> str:
    """Teacher vs student parameters and GFLOPs per patch, with ratios."""
    header = (f"{'configuration':<14} {'teacher params':>14} {'student params':>14} {'ratio':>7} "
              f"{'teacher GFLOPs':>14} {'student GFLOPs':>14} {'ratio':>7}  student widths / depth")
    lines = [header, "-" * len(header)]
    for p in planned:
        s = p.student
        lines.append(
            f"{p.name:<14} {p.teacher.params / 1e6:>13.2f}M {s.cost.params / 1e6:>13.3f}M "
            f"{s.cost.params / p.teacher.params:>7.3f} {p.teacher.gflops:>14.2f} {s.cost.gflops:>14.3f} "
            f"{s.cost.gflops / p.teacher.gflops:>7.3f}  {list(s.architecture['arch_kwargs']['features_per_stage'])}"
            f" enc {list(s.encoder_depth)} dec {list(s.decoder_depth)}"
            + (f", {p.latency_ms:.1f} ms per patch (measured)" if p.latency_ms is not None else ""))
    return "\n".join(lines)
