"""nnkd_distill: from a trained teacher to an exported student in one command.

For each fold: plan the student (if not done), cache the teacher (cached logit KD is the default: a training step
then costs about a plain one), train and validate the student, and at the end export every fold as one stock
nnU-Net model folder and print teacher vs student. Every step resumes: planning and caching skip what is done,
a fold's training continues from its latest checkpoint, a finished fold is kept.
"""

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from nnkd.atomic import write_json_atomic
from nnkd.errors import NnkdError
from nnkd.folds import numbered_or_all, read_model_folder, split_cases, trained_folds
from nnkd.method_table import DEFAULT_METHOD, METHOD_TABLE
from nnkd.nnunet_env import find_dataset_name, parse_fold, raw_dataset_json, require_env
from nnkd.outputs import OutputLock, check_output, write_manifest
from nnkd.planners.budget import Budget
from nnkd.plans import DEFAULT_TEACHER_PLANS, PreprocessedConfiguration
from nnkd.records import software_versions
from nnkd.run.common import ScheduledRequest
from nnkd.teacher_spec import TeacherSpec
from nnkd.run_names import split_run_trainer_name

RECORD = "distill.json"  # in OUT: what nnkd_distill made there and the table it printed
COMMAND = "nnkd_distill"


@dataclass
class DistillRequest(ScheduledRequest):
    dataset: str
    teacher: str
    output: Path
    configuration: str = "3d_fullres"
    folds: tuple[str, ...] = ()  # empty: the teacher's trained folds (nnunet: teachers), else 0 1 2 3 4
    budget: Budget = field(default_factory=lambda: Budget(preset="tiny"))
    teacher_plans: str = DEFAULT_TEACHER_PLANS
    method: str = DEFAULT_METHOD
    online: bool = False  # run the teacher in every step instead of caching its predictions once
    hyperparameters: dict = field(default_factory=dict)
    seed: int | None = None
    device: str | None = None
    step_size: float = 0.5
    run_name: str | None = None
    zip: bool = False
    onnx: bool = False
    timing: bool = True  # time teacher and student per case on the first fold's validation cases
    timing_cases: int = 3
    test: bool = False  # also predict imagesTs with the student and the teacher, evaluated against labelsTs
    num_processes: int | None = None
    # --max-dice-loss D: search a ladder of budgets for the smallest (or fastest) student within D Dice points of
    # the teacher on the first fold (nnkd.pipeline.search) instead of taking `budget`
    max_dice_loss: float | None = None
    objective: str = "params"
    ladder: tuple[int, ...] = ()  # 1/N fractions; empty: nnkd.pipeline.search.LADDER_FRACTIONS


# ------------------------------------------------------------------ checks before anything is written
def checked_output(output: Path, request: DistillRequest) -> Path:
    """OUT as a resolved path, where nnkd.outputs.check_output allows nnkd_distill to write (never nnU-Net's
    folders, a model folder or the teacher), and either new, empty, or what an earlier nnkd_distill of the same
    dataset, teacher, configuration, method and settings wrote (a rerun resumes and replaces only that)."""

    teacher_path = teacher_folder(request.teacher)
    output = check_output(output, COMMAND, inputs=[teacher_path] if teacher_path else [])
    record = output / RECORD
    if record.is_file():  # (a folder nnkd_distill did not write was refused above)
        earlier = json.loads(record.read_text())
        mine = json.loads(json.dumps(request_identity(request)))  # as distill.json holds it
        theirs = {k: earlier.get(k) for k in mine if k in earlier}
        if theirs != {k: mine[k] for k in theirs}:
            differ = ", ".join(f"{k} {theirs[k]!r} (now {mine[k]!r})" for k in theirs if theirs[k] != mine[k])
            raise NnkdError(f"-o {output} holds the nnkd_distill output of another request: {differ}",
                            "choose another -o for another dataset, teacher, configuration, method, budget or settings")
    return output


def request_identity(request: DistillRequest) -> dict:
    """What makes two nnkd_distill requests the same student (recorded in distill.json, compared on a rerun)."""
    from nnkd.planners.student_planner import student_plans_identifier
    from nnkd.trainers.methods import METHODS

    # the search asked for, under its own key: distill.json's `search` is the search's result (SearchResult)
    searched = {"search_request": {"max_dice_loss": request.max_dice_loss, "objective": request.objective,
                                   "ladder": list(request.ladder)}} if request.max_dice_loss is not None else \
        {"plans": student_plans_identifier(request.budget, request.teacher_plans)}
    return {"dataset": find_dataset_name(request.dataset), "teacher": request.teacher,
            "configuration": request.configuration, "method": request.method, **searched,
            "hyperparameters": METHODS[request.method].coerce_settings(request.hyperparameters), "seed": request.seed,
            "schedule": schedule_of_request(request), "online": request.online}


def schedule_of_request(request: DistillRequest) -> dict:
    from nnkd.trainers.run_config import SCHEDULE_KEYS

    return {k: getattr(request, k) for k in SCHEDULE_KEYS if getattr(request, k) is not None}


def teacher_folder(spec: str) -> Path | None:
    """The model folder of an nnunet: teacher spec (None for other families)."""
    parsed = TeacherSpec.parse(spec)
    return Path(parsed.path).expanduser() if parsed.family == "nnunet" and parsed.path else None


def teacher_folds(spec: str, folds: tuple[str, ...]) -> list[str]:
    """The folds to distil: those asked for, or for an nnunet: teacher its trained folds (fold_all alone
    gives fold all), for other teachers nnU-Net's five."""

    if folds:
        return [str(parse_fold(f)) for f in dict.fromkeys(folds)]
    folder = teacher_folder(spec)
    if folder is None:
        return ["0", "1", "2", "3", "4"]
    if not folder.is_dir():
        raise NnkdError(f"teacher folder {folder} not found", "give the nnU-Net model folder of a trained teacher "
                        "(…/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres)")
    trained = trained_folds(folder)
    if not trained:
        raise NnkdError(f"the teacher {folder} has no trained fold (no fold_X/checkpoint_final.pth)",
                        "finish the teacher's training first, or name its checkpoint with ?checkpoint=… and -f")
    return numbered_or_all(trained)


def checked_teachers(spec: str, folds: list[str], dataset_json: dict, needs_logits: bool):
    """Load the teacher of every fold on the CPU (a missing fold or checkpoint stops here) and check what can be
    checked before the student is planned: input channels and, for logit KD, the labels. The first fold's teacher."""
    from nnkd.teachers.registry import create_teacher

    first = None
    for fold in folds:
        teacher = create_teacher(spec, fold=fold, device="cpu")
        channels = len(dataset_json["channel_names"])
        if teacher.in_channels != channels:
            raise NnkdError(f"the teacher takes {teacher.in_channels} input channel(s), the dataset has {channels}",
                            "use a teacher trained on images with the same channels")
        if needs_logits and (not teacher.has_logits or dict(teacher.labels) != dict(dataset_json["labels"])):
            found = dict(teacher.labels) if teacher.has_logits else "no logits"
            raise NnkdError(f"teacher labels {found} differ from the dataset's {dict(dataset_json['labels'])}",
                            "logit KD needs the same label set; use a feature method (--method feature or cka)")
        first = first or teacher
    return first


def check_training_request(request: DistillRequest, cls, cached: bool) -> None:
    """What nnkd_train checks before writing (the request, --hp names, types, rules and finiteness, --seed,
    --run-name), here before the student is planned and the teacher cached, which can take hours."""
    from nnkd.run.train import TrainRequest, check_request, requested_run_name

    base = TrainRequest(dataset=request.dataset, configuration=request.configuration, fold="0", method=request.method,
                        teachers=(request.teacher,), teacher_cache=cached, hyperparameters=dict(request.hyperparameters),
                        seed=request.seed, run_name=request.run_name)
    check_request(base, cls)
    given = cls.coerce_settings(request.hyperparameters)
    cls.check_settings(cls.default_settings() | given, 1)
    requested_run_name(base, cls, given)


def teacher_plan_cost(dataset_name: str, teacher_plans: str, configuration: str, latency_device: str | None = None):
    """The teacher plan's network cost in a configuration (parameters, GFLOPs per patch) and, with
    `latency_device`, its measured patch latency in ms (else None); None where its plans do not exist yet."""
    from nnkd.planners.architecture_search import StudentSearch
    from nnkd.plans import num_input_channels, num_segmentation_heads

    try:
        loaded = PreprocessedConfiguration.load(dataset_name, teacher_plans, None)
    except NnkdError:  # not planned yet
        return None
    plans, dataset_json = loaded.plans, loaded.dataset_json
    plan = plans["configurations"].get(configuration, {})
    if "architecture" not in plan:
        return None
    channels, heads = num_input_channels(plans, configuration, dataset_json), num_segmentation_heads(plans, dataset_json)
    cost = StudentSearch(plan["architecture"], channels, heads, plan["patch_size"]).teacher_cost()
    latency = None
    if latency_device:
        from nnkd.planners.budget import default_latency_runtime
        from nnkd.planners.latency import measure_patch_latency

        latency = measure_patch_latency(plan["architecture"], channels, heads, plan["patch_size"], latency_device,
                                        default_latency_runtime(latency_device))
    return cost, latency


def check_budget_shrinks(dataset_name: str, budget: Budget, teacher_plans: str, configurations) -> None:
    """The planner's refusal of absolute limits that would not shrink the teacher (Budget.shrink_problem), made
    early where the teacher plans exist already (nnkd_distill and nnkd_plan_and_preprocess, before the
    fingerprint, the planning or the teacher's cache); `configurations` None: every configuration planned."""
    if budget.preset or budget.max_latency_ms is not None:
        return
    if configurations is None:
        try:
            available = PreprocessedConfiguration.load(dataset_name, teacher_plans, None).plans["configurations"]
        except (NnkdError, OSError, ValueError, KeyError):
            return  # no teacher plans yet: the planner refuses after planning them
        from nnkd.planners.plan_and_preprocess import resolve_configurations
        configurations = resolve_configurations(None, list(available))
    for name in configurations:
        facts = teacher_plan_cost(dataset_name, teacher_plans, name)
        problem = None if facts is None else budget.shrink_problem(facts[0])
        if problem is not None:
            raise NnkdError(f"{problem.problem} ({teacher_plans} {name})", problem.remedy)


# ------------------------------------------------------------------ the steps
def planned_student(dataset_name: str, request: DistillRequest) -> str:
    """The student plans name, planning and preprocessing first when they are not there."""
    from nnkd.planners.plan_and_preprocess import ensure_planned

    return ensure_planned(dataset_name, request.budget, request.configuration, request.teacher_plans,
                          request.num_processes, command="nnkd_distill")


def train_fold(request: DistillRequest, dataset_name: str, plans: str, fold: str, cached: bool) -> Path:
    """Train the fold's student unless it is done; resume it when it was started."""
    from nnkd.run.common import validation_dice
    from nnkd.run.train import TrainRequest, new_run_folder, train

    base = TrainRequest(dataset=dataset_name, configuration=request.configuration, fold=fold, method=request.method,
                        plans=plans, teachers=(request.teacher,), teacher_cache=cached,
                        hyperparameters=dict(request.hyperparameters), seed=request.seed,
                        **request.schedule, device=request.device, run_name=request.run_name)
    folder = new_run_folder(base)
    if (folder / "checkpoint_final.pth").is_file():
        check_reusable(folder, request, fold, cached)
    if (folder / "checkpoint_final.pth").is_file() and validation_dice(folder) is not None:
        print(f"nnkd_distill: fold {fold} is trained and validated ({folder}), skipping")
        return folder
    if (folder / "checkpoint_final.pth").is_file():
        return train(replace(base, validation_only=True))
    if (folder / "checkpoint_latest.pth").is_file():
        print(f"nnkd_distill: fold {fold} was started, resuming it")
        return train(replace(base, continue_training=True))
    return train(base)


NNUNET_EPOCHS, NNUNET_ITERATIONS = 1000, 250  # nnUNetTrainer's schedule when --epochs / --iterations-per-epoch are not given


def _teacher_curve(spec: str, fold: str, epochs: int) -> list[float] | None:
    """An nnunet: teacher's EMA pseudo Dice, read at the same fraction of its own schedule as each of the
    students' `epochs` (both follow nnU-Net's poly learning rate); None for other teachers."""
    from nnkd.evaluation.convergence import training_curve

    folder = teacher_folder(spec)
    try:
        ema = training_curve(folder / f"fold_{fold}")["ema_fg_dice"] if folder else None
    except (FileNotFoundError, NnkdError, KeyError):
        return None
    if not ema:
        return None
    return [ema[max(1, round((e + 1) / epochs * len(ema))) - 1] for e in range(epochs)]


def _plan_candidates(request: DistillRequest, dataset_name: str) -> tuple[list, dict, list]:
    """The search's ladder planned: its candidates (size from each student plans), each candidate's plans name,
    and the budgets no architecture fits (with the planner's reason)."""
    from nnkd.pipeline.search import LADDER_FRACTIONS, Candidate, ladder
    from nnkd.planners.student_planner import STUDENT_KEY

    if teacher_plan_cost(dataset_name, request.teacher_plans, request.configuration) is None:
        planned_student(dataset_name, replace(request, budget=Budget(preset="tiny")))  # the teacher plans, preprocessed
    latency_device = (request.device or "cpu") if request.objective == "latency" else None
    cost, latency = teacher_plan_cost(dataset_name, request.teacher_plans, request.configuration, latency_device)
    budgets = ladder(request.objective, cost.params, cost.gflops, latency, request.ladder or LADDER_FRACTIONS,
                     latency_device or "cpu")
    candidates, plans_of, unplannable = [], {}, []
    for budget in budgets:
        try:
            plans = planned_student(dataset_name, replace(request, budget=budget))
        except NnkdError as e:  # e.g. no architecture this small
            unplannable.append({"budget": budget.name, "reason": str(e)})
            continue
        info = PreprocessedConfiguration.load(dataset_name, plans, request.configuration).plans[
            "configurations"][request.configuration].get(STUDENT_KEY, {})
        candidates.append(Candidate(budget, info.get("params"), info.get("gflops_per_patch"), info.get("latency_ms")))
        plans_of[budget.name] = plans
    return candidates, plans_of, unplannable


def search_budget(request: DistillRequest, dataset_name: str, fold: str, cached: bool):
    """--max-dice-loss: plan the ladder's candidates, search them on `fold` (nnkd.pipeline.search: successive
    halving, each candidate trained rung by rung with nnkd_stop_after_epoch, resumed with --c) and return the
    chosen budget with the search record. A rerun resumes: finished candidates are reused, stopped ones continue."""
    import statistics

    from nnkd.evaluation.convergence import training_curve
    from nnkd.pipeline.search import Candidate, Progress, no_candidate_error, run_search
    from nnkd.run.common import validation_dice
    from nnkd.trainers.nnkd_trainer import STOP_AFTER_EPOCH_ENV

    teacher_dice = teacher_validation_dice(request.teacher, fold)
    if teacher_dice is None:
        raise NnkdError(f"--max-dice-loss compares with the teacher's validation Dice of fold {fold}, and "
                        f"{request.teacher} has none", "use an nnunet: teacher whose fold was validated by nnU-Net, "
                        "or choose a budget (--budget, --max-params)")
    candidates, plans_of, unplannable = _plan_candidates(request, dataset_name)
    epochs = request.num_epochs or NNUNET_EPOCHS
    iterations = request.num_iterations_per_epoch or NNUNET_ITERATIONS

    def train(candidate: Candidate, epoch: int) -> Progress:
        previous = os.environ.pop(STOP_AFTER_EPOCH_ENV, None)
        if epoch < epochs:
            os.environ[STOP_AFTER_EPOCH_ENV] = str(epoch)
        try:
            folder = train_fold(replace(request, budget=candidate.budget), dataset_name, plans_of[candidate.budget.name],
                                fold, cached)
        finally:
            os.environ.pop(STOP_AFTER_EPOCH_ENV, None)
            if previous is not None:
                os.environ[STOP_AFTER_EPOCH_ENV] = previous
        curve = training_curve(folder)
        seconds = curve["epoch_seconds"][1:] or curve["epoch_seconds"]
        done = (folder / "checkpoint_final.pth").is_file()
        return Progress(curve["ema_fg_dice"], validation_dice(folder) if done else None,
                        statistics.median(seconds) / iterations if seconds else None)

    print(f"nnkd_distill: searching {len(candidates)} candidate students for the smallest by {request.objective} "
          f"within {request.max_dice_loss:g} Dice points of the teacher ({teacher_dice:.4f}, fold {fold})")
    result = run_search(candidates, train, teacher_dice=teacher_dice, max_dice_loss=request.max_dice_loss,
                        epochs=epochs, iterations_per_epoch=iterations, objective=request.objective,
                        teacher_ema=_teacher_curve(request.teacher, fold, epochs))
    record = result.to_json() | {"objective": request.objective, "fold": fold, "unplannable": unplannable}
    print(format_search(record))
    if result.chosen is None:
        raise no_candidate_error(result)
    return next(c.budget for c in candidates if c.budget.name == result.chosen), record


def format_search(record: dict) -> str:
    """The search's table: every candidate, how far it trained, its Dice and why it stopped."""
    lines = [f"{'candidate':<22}{'params':>11}{'GFLOPs':>9}{'epochs':>8}{'EMA':>7}{'Dice':>8}  status", "-" * 90]
    for c in record["candidates"]:
        lines.append(f"{c['budget']:<22}{_count(c['parameters']):>11}{_number(c['gflops_per_patch'], 3):>9}"
                     f"{c['epochs_trained']:>8}{_number(c['ema_pseudo_dice'], 3):>7}{_number(c['dice']):>8}  "
                     f"{c['status']}: {c['reason']}")
    cost = record.get("cost_vs_chosen_alone")
    lines.append(f"chosen: {record['chosen'] or 'none'}; search training time {record['search_seconds'] / 60:.1f} min"
                 + (f" = {cost:.2f}× the chosen student alone" if cost else ""))
    return "\n".join(lines)


def check_reusable(folder: Path, request: DistillRequest, fold: str, cached: bool) -> None:
    """A fold trained before is reused only when its teacher.json records what this request asks: method,
    teacher (cached or online), hyper-parameters, seed and schedule (run.common.check_resume, exactly)."""
    from nnkd.run.common import check_resume
    from nnkd.trainers.methods import METHODS
    from nnkd.trainers.run_config import SCHEDULE_FLAGS, RunConfig

    recorded = RunConfig.load(folder)
    if recorded is None:
        raise NnkdError(f"fold {fold}'s run {folder} has a final checkpoint but no teacher.json",
                        f"remove {folder} to retrain it, or give --run-name NAME for a new run")
    cls = METHODS[request.method]
    teachers = recorded.teacher_specs
    started = {"--method": recorded.method, "--teacher": teachers,
               "--online": bool(teachers) and not recorded.reads_cache,
               "--hp": recorded.hyperparameters, "--seed": recorded.seed,
               **{flag: recorded.schedule.get(key) for key, flag in SCHEDULE_FLAGS.items()}}
    wanted = {"--method": request.method, "--teacher": [request.teacher] if cls.needs_teacher else [],
              "--online": cls.needs_teacher and not cached,
              "--hp": cls.default_settings() | cls.coerce_settings(request.hyperparameters), "--seed": request.seed,
              **{flag: getattr(request, key) for key, flag in SCHEDULE_FLAGS.items()}}
    check_resume(started, wanted, what=f"finished run of fold {fold} ({folder})", exact=True,
                 remedy=f"give --run-name NAME to train a new run, or remove {folder} to retrain this one")


def teacher_validation_dice(spec: str, fold: str) -> float | None:
    """nnU-Net's own validation Dice of an nnunet: teacher's fold (the student's validation cases when the
    teacher was trained on this dataset's splits); None for other teachers or a fold never validated."""
    folder = teacher_folder(spec)
    if folder is None or {"fold", "folds"} & set(TeacherSpec.parse(spec).options):
        return None
    from nnkd.run.common import validation_dice

    return validation_dice(folder / f"fold_{fold}")


def sizes(teacher, plans_record: dict, patch_size) -> dict:
    """Parameters and GFLOPs per patch of the teacher (counted on the loaded model) and the student (the planner's
    record in the plans)."""
    from nnkd.planners.network_cost import count_gflops

    try:
        teacher_gflops = count_gflops(teacher, teacher.in_channels, patch_size)
    except Exception:  # some scripted or foreign models hide their operations from FlopCounterMode
        teacher_gflops = None
    return {"teacher": {"parameters": sum(p.numel() for p in teacher.parameters()),
                        "gflops_per_patch": round(teacher_gflops, 4) if teacher_gflops else None},
            "student": {"parameters": plans_record.get("params"),
                        "gflops_per_patch": plans_record.get("gflops_per_patch")}}


def teacher_plans(dataset_name: str, request: DistillRequest) -> dict:
    """The dataset's teacher plans (those the student was planned from), which a wrapped teacher predicts with."""
    return PreprocessedConfiguration.load(dataset_name, request.teacher_plans, request.configuration).plans


def seconds_per_case(request: DistillRequest, dataset_name: str, teacher, student_folder: Path) -> dict:
    """nnU-Net's whole per-case prediction (preprocessing, sliding window, resampling back; no mirroring) of the
    first fold's validation cases, median after a warm-up case, teacher and student on the same device."""
    import torch

    from nnkd.evaluation.measure import predict_and_time, teacher_network, validation_images
    from nnkd.devices import resolve_device
    from nnkd.inference.predict import make_predictor
    from nnkd.plans import network_from_plans
    from nnkd.checkpoints import load_checkpoint

    paths = require_env("nnUNet_raw", "nnUNet_preprocessed")
    fold = student_folder.name.removeprefix("fold_")
    cases = split_cases(paths["nnUNet_preprocessed"] / dataset_name, fold, "val")
    student_plans, dataset_json = read_model_folder(student_folder.parent)
    images = validation_images(paths["nnUNet_raw"] / dataset_name, cases[:request.timing_cases], dataset_json)
    device = resolve_device(request.device)

    def timed(network, weights, plans, configuration) -> float:
        predictor = make_predictor(plans, configuration, dataset_json, [weights], network, None, device,
                                   use_mirroring=False)
        predictor.allow_tqdm = False
        return predict_and_time(predictor, images, None, None, dataset_json["file_ending"])

    network = network_from_plans(student_plans, request.configuration, dataset_json)
    weights = load_checkpoint(student_folder / "checkpoint_final.pth")["network_weights"]
    result = {"student": timed(network, weights, student_plans, request.configuration)}
    run = teacher_network([teacher.to(device)], teacher_plans(dataset_name, request), request.configuration)
    result["teacher"] = timed(run.network, run.weights[0], run.plans, run.configuration)
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return {k: round(v, 4) for k, v in result.items()}


def test_dice(request: DistillRequest, dataset_name: str, folds: list[str], trained: dict) -> dict:
    """Student and teacher on the raw dataset's labelled test cases (imagesTs with labelsTs), each as
    nnUNetv2_predict runs it with the distilled folds (softmax averaged over folds; no mirroring), evaluated with
    nnU-Net's evaluation: Dice and Dice per class of both, and the cases."""
    from nnkd.checkpoints import load_checkpoint
    from nnkd.devices import resolve_device
    from nnkd.evaluation.measure import labelled_test_cases, predict_and_evaluate, teacher_network, validation_images
    from nnkd.plans import network_from_plans
    from nnkd.teachers.registry import create_teacher

    paths = require_env("nnUNet_raw", "nnUNet_preprocessed")
    raw = paths["nnUNet_raw"] / dataset_name
    student_plans, dataset_json = read_model_folder(trained[folds[0]].parent)
    cases = labelled_test_cases(raw, dataset_json)
    images = validation_images(raw, cases, dataset_json, images="imagesTs")
    device = resolve_device(request.device)
    student = predict_and_evaluate(
        network_from_plans(student_plans, request.configuration, dataset_json),
        [load_checkpoint(trained[f] / "checkpoint_final.pth")["network_weights"] for f in folds],
        student_plans, request.configuration, dataset_json, images, raw, "labelsTs", device)
    run = teacher_network([create_teacher(request.teacher, fold=f, device="cpu") for f in folds],
                          teacher_plans(dataset_name, request), request.configuration)
    teacher = predict_and_evaluate(run.network, run.weights, run.plans, run.configuration, dataset_json, images,
                                   raw, "labelsTs", device)
    return {"cases": cases, "teacher_dice": teacher["dice"], "student_dice": student["dice"],
            "teacher_dice_per_class": teacher["dice_per_class"], "student_dice_per_class": student["dice_per_class"]}


def check_test_cases(dataset_name: str, dataset_json: dict) -> None:
    """--test needs labelled test cases; said before anything is trained."""
    from nnkd.evaluation.measure import labelled_test_cases

    raw = require_env("nnUNet_raw")["nnUNet_raw"] / dataset_name
    if not labelled_test_cases(raw, dataset_json):
        raise NnkdError(f"--test evaluates on imagesTs against labelsTs, and {raw} has no case in both",
                        "add reference segmentations of the test images to labelsTs, or leave --test out")


# ------------------------------------------------------------------ the table
def _count(n) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} M"


def _number(x, digits=4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _ratio(teacher, student) -> str:
    return "—" if not teacher or not student else f"{teacher / student:.1f}×"


def format_table(record: dict) -> str:
    """Teacher vs student per fold, then size and speed side by side."""
    lines = [f"{'fold':>6}  {'teacher Dice':>12}  {'student Dice':>12}"]
    for row in record["folds"]:
        lines.append(f"{row['fold']:>6}  {_number(row['teacher_dice']):>12}  {_number(row['student_dice']):>12}")
    means = record["mean"]
    lines.append(f"{'mean':>6}  {_number(means['teacher_dice']):>12}  {_number(means['student_dice']):>12}")
    t, s = record["models"]["teacher"], record["models"]["student"]
    lines += ["", f"{'':18}{'teacher':>12}{'student':>12}{'teacher/student':>17}",
              f"{'parameters':18}{_count(t['parameters']):>12}{_count(s['parameters']):>12}"
              f"{_ratio(t['parameters'], s['parameters']):>17}",
              f"{'GFLOPs per patch':18}{_number(t['gflops_per_patch'], 2):>12}{_number(s['gflops_per_patch'], 2):>12}"
              f"{_ratio(t['gflops_per_patch'], s['gflops_per_patch']):>17}",
              f"{'seconds per case':18}{_number(t.get('seconds_per_case'), 3):>12}"
              f"{_number(s.get('seconds_per_case'), 3):>12}"
              f"{_ratio(t.get('seconds_per_case'), s.get('seconds_per_case')):>17}"]
    if record["mean"]["teacher_dice"] is None:
        lines.append("teacher Dice: only an nnunet: teacher validated on this dataset's folds has one")
    if record.get("test"):
        test = record["test"]
        lines[len(record["folds"]) + 2:len(record["folds"]) + 2] = [
            f"{'test':>6}  {_number(test['teacher_dice']):>12}  {_number(test['student_dice']):>12}"
            f"  ({len(test['cases'])} case(s) of imagesTs, folds {'+'.join(record['folds_distilled'])})"]
    return "\n".join(lines)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# ------------------------------------------------------------------ the command
def distill(request: DistillRequest) -> dict:
    """Plan, cache, train and validate each fold, export; the record written to OUT/distill.json. Every check
    runs before the first step writes anything; OUT is locked while the command runs."""
    from nnkd.trainers.methods import METHODS

    paths = require_env("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    row = METHOD_TABLE.get(request.method)
    if row is None:
        raise NnkdError(f"nnkd_distill does not run method '{request.method}'",
                        f"use one of {', '.join(m for m, r in METHOD_TABLE.items() if r.one_step)} "
                        "(LoRKD: nnkd_train_lorkd)")
    if row.teachers == "several":
        raise NnkdError(f"method {request.method} distils several teachers; nnkd_distill runs one teacher",
                        f"use nnkd_train --method {request.method} --teacher A --teacher B")
    if row.transfer_set:
        raise NnkdError(f"method {request.method} trains on a transfer set (--unlabeled/--synthetic) that "
                        "nnkd_distill does not build", f"use nnkd_tune_teacher, nnkd_synthesize and nnkd_train "
                        f"--method {request.method} (docs/methods.md)")
    cls = METHODS[request.method]
    cached = cls.needs_teacher and not request.online and not cls.needs_teacher_features
    check_training_request(request, cls, cached)
    dataset_name = find_dataset_name(request.dataset)
    raw = paths["nnUNet_raw"] / dataset_name
    dataset_json = raw_dataset_json(raw)
    output = checked_output(request.output, request)
    if request.max_dice_loss is not None:
        from nnkd.pipeline.search import OBJECTIVES, check_max_dice_loss

        check_max_dice_loss(request.max_dice_loss)
        if request.objective not in OBJECTIVES:
            raise NnkdError(f"--objective {request.objective} is unknown", f"use one of {', '.join(OBJECTIVES)}")
        if teacher_validation_dice(request.teacher, (request.folds or teacher_folds(request.teacher, ()))[0]) is None:
            raise NnkdError(f"--max-dice-loss compares with the teacher's validation Dice, and {request.teacher} "
                            "has none on the first fold", "use an nnunet: teacher validated by nnU-Net, or a budget")
    else:
        check_budget_shrinks(dataset_name, request.budget, request.teacher_plans, [request.configuration])
    if request.test:
        check_test_cases(dataset_name, dataset_json)
    folds = teacher_folds(request.teacher, request.folds)
    teacher = checked_teachers(request.teacher, folds, dataset_json, cls.needs_teacher_logits)
    with OutputLock(output, COMMAND):
        return _distill(request, cls, dataset_name, output, folds, teacher, cached)


def _distill(request: DistillRequest, cls, dataset_name: str, output: Path, folds: list[str], teacher,
             cached: bool) -> dict:
    from nnkd.cache.compute import CacheRequest, cache_teacher
    from nnkd.inference.export import ExportRequest, export
    from nnkd.inference.students import StudentRef
    from nnkd.planners.student_planner import STUDENT_KEY
    from nnkd.run.common import validation_dice

    print(f"nnkd_distill: {dataset_name} {request.configuration}, folds {' '.join(folds)}, method {request.method} "
          f"({'cached' if cached else 'online'} teacher {request.teacher})")
    identity, search = request_identity(request), None
    if request.max_dice_loss is not None:  # choose the budget on the first fold, then distil every fold with it
        if cached:
            cache_teacher(CacheRequest(dataset=dataset_name, configuration=request.configuration, fold=folds[0],
                                       teacher=request.teacher, plans=request.teacher_plans, device=request.device,
                                       step_size=request.step_size))
        budget, search = search_budget(request, dataset_name, folds[0], cached)
        request = replace(request, budget=budget)
    plans = planned_student(dataset_name, request)
    trained = {}
    for fold in folds:
        if cached:
            cache_teacher(CacheRequest(dataset=dataset_name, configuration=request.configuration, fold=fold,
                                       teacher=request.teacher, plans=request.teacher_plans, device=request.device,
                                       step_size=request.step_size))
        trained[fold] = train_fold(request, dataset_name, plans, fold, cached)

    run_name = split_run_trainer_name(trained[folds[0]].parent.name.split("__")[0])[1]
    export(ExportRequest(StudentRef(dataset=dataset_name, configuration=request.configuration, folds=folds,
                                    plans=plans, method=request.method, run_name=run_name),
                         output=output, zip=request.zip, onnx=request.onnx, overwrite=True, command=COMMAND))
    student_plans, _ = read_model_folder(trained[folds[0]].parent)
    configuration = student_plans["configurations"][request.configuration]
    record = {**identity, "cached": cached, "plans": plans, "run_name": run_name,
              "run_folder": str(trained[folds[0]].parent), "versions": software_versions(),
              "folds": [{"fold": f, "teacher_dice": teacher_validation_dice(request.teacher, f),
                         "student_dice": validation_dice(trained[f])} for f in folds]}
    record["mean"] = {k: _mean([row[k] for row in record["folds"]]) for k in ("teacher_dice", "student_dice")}
    if search is not None:
        record["search"] = search
    record["models"] = sizes(teacher, configuration.get(STUDENT_KEY, {}), configuration["patch_size"])
    if request.timing:
        timing = seconds_per_case(request, dataset_name, teacher, trained[folds[0]])
        for who in ("teacher", "student"):
            record["models"][who]["seconds_per_case"] = timing[who]
    if request.test:
        record["folds_distilled"] = list(folds)
        record["test"] = test_dice(request, dataset_name, folds, trained)
    write_json_atomic(output / RECORD, record)
    write_manifest(output, COMMAND, [RECORD], add=True)
    print("\n" + format_table(record) + f"\n\nnnkd_distill: the student is in {output} "
          f"(nnUNetv2_predict_from_modelfolder -m {output} -i IN -o OUT); this table: {output / RECORD}")
    return record
