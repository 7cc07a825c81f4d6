"""One benchmark: plan every budget, train every method on it (and logit KD from a cached teacher), then
measure the teacher and each student the same way on the fold's validation cases."""

import contextlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from nnkd.atomic import write_json_atomic
from nnkd.evaluation.measure import (evaluate_runtimes, measure_model, measured_runtimes, only_runtimes,
                                     teacher_network, validation_images)
from nnkd.benchmark.runs import (Run, check_recorded_settings, is_finished, parse_method, train,
                                 train_study_teacher)
from nnkd.benchmark.stats import derived_ratios, summarize
from nnkd.devices import cpu_count
from nnkd.errors import NnkdError
from nnkd.folds import read_model_folder, split_cases
from nnkd.outputs import check_output, read_manifest, write_manifest
from nnkd.method_table import METHOD_TRAINERS
from nnkd.nnunet_env import datasets_with_id, find_dataset_name, require_env
from nnkd.planners.student_planner import STUDENT_KEY
from nnkd.plans import PreprocessedConfiguration
from nnkd.run.common import ScheduledRequest

QUICK_DATASET = 999
COMMAND = "nnkd_benchmark"


@dataclass
class BenchmarkRequest(ScheduledRequest):
    output: Path
    dataset: str | None = None
    configuration: str = "3d_fullres"
    teacher: str | None = None  # measured beside the students, and the teacher of every single-teacher method
    extra_teachers: tuple[str, ...] = ()  # further --teacher specs: multiteacher distils all of them
    methods: tuple[str, ...] = ("none", "logit", "feature", "cka", "drd")
    budgets: tuple[str, ...] = ("tiny", "small")
    fold: str = "0"
    labeled: int | None = None
    # the schedule of every run (ScheduledRequest's fields, with the benchmark's defaults); one validation
    # iteration per epoch: the learning curves' pseudo Dice
    num_epochs: int = field(default=100, kw_only=True)
    num_iterations_per_epoch: int = field(default=250, kw_only=True)
    num_val_iterations_per_epoch: int = field(default=1, kw_only=True)
    seeds: int = 3  # every run is repeated with seeds 0 … seeds−1
    device: str | None = None  # default: cuda if available, else cpu
    cached: bool = True
    cached_only: bool = False  # logit KD only from the cached teacher (no online logit runs)
    onnx: bool = True
    int8: bool = False  # also ONNX Runtime int8 (nnkd_export --int8's quantization): its Dice and latency
    quick: bool = False
    num_processes: int = 2
    jobs: int = 1  # runs trained at once (each in a training process of its own)


def _quick_setup(request: BenchmarkRequest, output: Path) -> None:
    """A minutes-long smoke run: a small synthetic dataset, a briefly trained nnU-Net teacher, 2 iterations."""
    from nnkd.datasets.synthetic import SyntheticSpec

    request.dataset = request.dataset or str(QUICK_DATASET)
    request.num_epochs, request.num_iterations_per_epoch = 1, 2
    request.seeds = request.seeds or 1
    synthetic_dataset(SyntheticSpec(dataset_id=int(request.dataset), cases=8, shape=(32, 32, 32)), output)


def synthetic_dataset(spec, output: Path) -> str:
    """The dataset of `spec`'s ID, written from `spec` (a SyntheticSpec) unless $nnUNet_raw has that ID already (an
    existing dataset, e.g. a converted real one, is used as it is); its name."""
    from nnkd.datasets.synthetic import write_synthetic_dataset

    raw = require_env("nnUNet_raw")["nnUNet_raw"]
    if not datasets_with_id(raw, spec.dataset_id):
        with _logged(output, "make_synthetic"):
            write_synthetic_dataset(spec, raw)
    return find_dataset_name(spec.dataset_id)


def study_dataset(spec, configuration: str, num_processes: int, output: Path, command: str) -> str:
    """A study script's dataset (synthetic_dataset), planned unless it is: nnU-Net's default plans preprocessed, which
    its teacher trains on, and the tiny student (ensure_planned; nnU-Net's output in OUT/logs/plan.log)."""
    from nnkd.planners.budget import Budget
    from nnkd.planners.plan_and_preprocess import ensure_planned

    name = synthetic_dataset(spec, output)
    with _logged(output, "plan"):
        ensure_planned(name, Budget.from_name("tiny"), configuration, num_processes=num_processes, command=command)
    return name


@contextlib.contextmanager
def _logged(output: Path, name: str):
    """What this process prints during one step, appended to OUT/logs/<name>.log (as the steps run in processes of
    their own log theirs)."""
    (output / "logs").mkdir(parents=True, exist_ok=True)
    with open(output / "logs" / f"{name}.log", "a") as log, contextlib.redirect_stdout(log):
        yield


def _plan(request: BenchmarkRequest, dataset_name: str, output: Path) -> dict[str, str]:
    """Student plans per budget, planned and preprocessed unless they are there (ensure_planned: a rerun plans
    nothing again); nnU-Net's planning output goes to OUT/logs/plan_<budget>.log."""
    from nnkd.planners.budget import Budget
    from nnkd.planners.plan_and_preprocess import ensure_planned

    plans = {}
    for budget in request.budgets:
        with _logged(output, f"plan_{budget}"):
            plans[budget] = ensure_planned(dataset_name, Budget.from_name(budget), request.configuration,
                                           num_processes=request.num_processes, command=COMMAND)
    return plans


def _quick_teacher(request: BenchmarkRequest, dataset_name: str, env: dict, output: Path) -> str:
    schedule = {"num_epochs": 1, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 1}
    folder = train_study_teacher(dataset_name, request.configuration, schedule, request.device,
                                 {**env, "nnUNet_results": str(output / "runs" / "teacher")},
                                 output / "logs" / "teacher.log", fold=str(request.fold), seed=None)
    return f"nnunet:{folder}"


def _runs(request: BenchmarkRequest, teacher_has_logits: bool) -> list[Run]:
    from nnkd.trainers.methods import METHODS

    variants = [parse_method(m) for m in request.methods]
    unknown = [m for m, _ in variants if m not in METHOD_TRAINERS]
    if unknown:
        raise NnkdError(f"unknown method(s) {', '.join(unknown)}", f"use some of {', '.join(METHOD_TRAINERS)}")
    for method, hp in variants:  # a bad name or value stops before any run
        cls = METHODS[method]
        cls.check_settings(cls.default_settings() | cls.coerce_settings(dict(hp)), 1 + len(request.extra_teachers))
    if request.seeds < 1:
        raise NnkdError(f"--seeds {request.seeds} runs nothing", "give --seeds 1 or more")
    if request.cached_only and not request.cached:
        raise NnkdError("--cached-only and --no-cache together leave logit KD no teacher", "drop one of them")
    runs = []
    for seed in range(request.seeds):
        for budget in request.budgets:
            for method, hp in variants:
                if METHODS[method].needs_teacher_logits and not teacher_has_logits:
                    if seed == 0:
                        print(f"note: {request.teacher} has no logits for this dataset; {method} is left out")
                    continue
                cls = METHODS[method]  # logit KD, and TS-KD without its feature term, can learn from the cache
                cacheable = cls.needs_teacher_logits and not cls.takes_several_teachers and \
                    not cls.uses_teacher_features(cls.default_settings() | cls.coerce_settings(dict(hp)))
                if not (cacheable and request.cached_only):
                    runs.append(Run(budget, method, seed=seed, hp=hp))
                if cacheable and request.cached:
                    runs.append(Run(budget, method, cached=True, seed=seed, hp=hp))
    return runs


def _calibration(request, dataset_name: str, plans: dict, configuration: str) -> list | None:
    """With --int8 (which run_benchmark accepts only with ONNX on): nnkd_export's calibration patches for a model
    planned by `plans`, from the fold's preprocessed training cases."""
    if not request.int8:
        return None
    from nnkd.inference.export import network_patch_size
    from nnkd.inference.quantize import calibration_patches, fold_cases

    data_folder, train, _ = fold_cases(dataset_name, plans, configuration, request.fold)
    return calibration_patches(data_folder, train, network_patch_size(plans, configuration))


def _runtimes(request, native: bool = True) -> tuple[str, ...]:
    """The runtimes a model is measured in: torch, and ONNX Runtime fp32 / int8 as asked (an nnU-Net network
    only: a wrapped teacher runs in torch alone)."""
    return ("torch", *(("onnx",) if request.onnx and native else ()),
            *(("int8",) if request.onnx and request.int8 and native else ()))


def _measured(done: Path, key: dict, runtimes: tuple, measure, evaluate) -> dict:
    """A model's measurements in `runtimes`, kept in `done` with `key` (what was measured): a rerun with the same
    key measures only the runtimes not measured before (adding --int8 times int8 alone; each ratio compares
    runtimes measured in one run), with another key everything again. `measure(runtimes)` times and writes the
    predictions, `evaluate(measured)` scores them."""
    previous = json.loads(done.read_text()) if done.is_file() else {}
    record = previous.get("result", {}) if previous.get("key") == key else {}
    missing = tuple(r for r in runtimes if r not in measured_runtimes(record))
    if missing:
        new = measure(missing)
        record = record | new | evaluate(new)
        write_json_atomic(done, {"key": key, "result": record})
    return only_runtimes(record, runtimes)


def _teacher_measurements(teacher, request, dataset_name, plans: dict, dataset_json, images, output, device,
                          progress) -> dict:
    """The teacher measured like a student when it predicts this dataset's labels; its size otherwise."""
    from nnkd.planners.network_cost import count_gflops

    patch = plans["configurations"][request.configuration]["patch_size"]
    try:
        gflops = count_gflops(teacher, teacher.in_channels, patch)
    except Exception:  # some scripted or foreign models hide their operations from FlopCounterMode
        gflops = None
    info = {"spec": request.teacher, "parameters": sum(p.numel() for p in teacher.parameters()),
            "gflops_per_patch": gflops or None, "logits": teacher.has_logits}
    if not teacher.has_logits or dict(teacher.labels) != dict(dataset_json["labels"]):
        return info
    folder = output / "predictions" / "teacher"
    key = {"spec": request.teacher, "checkpoint_sha256": teacher.checkpoint_sha256,
           "configuration": request.configuration, "cases": [case for case, *_ in images]}
    raw = Path(os.environ["nnUNet_raw"]) / dataset_name
    run = teacher_network([teacher], plans, request.configuration)

    def measure(runtimes):
        calibration = _calibration(request, dataset_name, run.plans, run.configuration) if "int8" in runtimes else None
        return measure_model(run.network, run.weights[0], run.plans, run.configuration, dataset_json, images, folder,
                             device, runtimes, progress, calibration)

    return info | _measured(folder / "measure.json", key, _runtimes(request, run.native), measure,
                            lambda new: evaluate_runtimes(new, folder, raw, dataset_json, run.plans))


def _student_measurements(record: dict, request, dataset_name, dataset_json, images, output, device,
                          progress) -> dict:
    from nnkd.checkpoints import load_checkpoint, sha256_of
    from nnkd.plans import network_from_plans

    folder = output / "predictions" / record["run"]
    fold_dir = Path(record["fold_folder"])
    plans, _ = read_model_folder(fold_dir.parent)
    raw = Path(os.environ["nnUNet_raw"]) / dataset_name
    key = {"checkpoint_sha256": sha256_of(fold_dir / "checkpoint_final.pth"), "configuration": request.configuration,
           "cases": [case for case, *_ in images]}

    def measure(runtimes):
        network = network_from_plans(plans, request.configuration, dataset_json)
        weights = load_checkpoint(fold_dir / "checkpoint_final.pth")["network_weights"]
        calibration = _calibration(request, dataset_name, plans, request.configuration) if "int8" in runtimes else None
        return measure_model(network, weights, plans, request.configuration, dataset_json, images, folder, device,
                             runtimes, progress, calibration)

    result = _measured(folder / "measure.json", key, _runtimes(request), measure,
                       lambda new: evaluate_runtimes(new, folder, raw, dataset_json, plans))
    student = plans["configurations"][request.configuration].get(STUDENT_KEY, {})
    return result | {"parameters": student.get("params"), "gflops_per_patch": student.get("gflops_per_patch")}


def longest_first(runs: list[Run], student_info: dict[str, dict]) -> list[Run]:
    """The order in which to start the runs: the costliest first, so that with --jobs the last lane does not
    train a long run alone at the end. A run's cost per iteration is estimated from its student plans
    (`student_info[budget]`, the plans' nnkd_student entry): the student's forward and backward, ~3× its GFLOPs
    per patch, plus the teacher's forward when the teacher runs live (not from the cache). Equal costs keep
    the order of `runs` (seed, budget, --methods)."""
    from nnkd.trainers.methods import METHODS

    def cost(run: Run) -> float:
        info = student_info.get(run.budget, {})
        live_teacher = METHODS[run.method].needs_teacher and not run.cached
        return 3 * (info.get("gflops_per_patch") or 0) + (info.get("teacher_gflops_per_patch") or 0) * live_teacher

    return sorted(runs, key=cost, reverse=True)


def _train_runs(runs: list, plans: dict, request, dataset_name: str, env: dict, output: Path, device) -> list[dict]:
    """Train (or reuse) every run, --jobs of them at once, the costliest first (`longest_first`); their records in
    the order of `runs`. On the CPU each of the parallel trainings gets its share of the cores (OMP_NUM_THREADS,
    unless the caller set it). A run that fails does not stop the others; the first failure is raised once all
    have ended."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    if request.jobs > 1 and device.type == "cpu" and "OMP_NUM_THREADS" not in env:
        env = {**env, "OMP_NUM_THREADS": str(max(1, cpu_count() // request.jobs))}
    student_info = {budget: PreprocessedConfiguration.load(dataset_name, identifier, request.configuration)
                    .plans["configurations"][request.configuration].get(STUDENT_KEY, {})
                    for budget, identifier in plans.items()}
    with ThreadPoolExecutor(max_workers=request.jobs) as pool:
        started = {id(run): pool.submit(train, run, plans[run.budget], request, dataset_name, env, output)
                   for run in longest_first(runs, student_info)}
        futures = [started[id(run)] for run in runs]
        for _ in tqdm(as_completed(futures), total=len(futures), desc="training runs", unit="run"):
            pass
    failed = next((f.exception() for f in futures if f.exception() is not None), None)
    if failed is not None:
        raise failed
    return [f.result() for f in futures]


def _check_options(request: BenchmarkRequest) -> None:
    if request.teacher is None and not request.quick:
        raise NnkdError("no teacher given", "pass --teacher SPEC (nnkd_teachers lists the families)")
    if request.jobs < 1:
        raise NnkdError(f"--jobs {request.jobs}: at least one run has to train at a time", "pass --jobs 1 or more")
    if request.int8:
        from nnkd.inference.quantize import require_quantization

        if not request.onnx:
            raise NnkdError("--int8 measures an ONNX Runtime int8 model, and --no-onnx turns ONNX off",
                            "drop one of them")
        require_quantization()


def _check_finished_runs(request: BenchmarkRequest, output: Path) -> None:
    """The methods, their settings and every run a previous benchmark finished in `output`, before anything is
    planned, cached or trained (a teacher without logits only leaves runs out)."""
    for run in _runs(request, teacher_has_logits=True):
        check_recorded_settings(run, request, output, teacher_known=request.teacher is not None)


def _cache_teacher(runs: list[Run], plans: dict, request: BenchmarkRequest, dataset_name: str, output: Path) -> None:
    """The teacher cached once, as nnkd_cache_teacher caches it (in this process; its output in OUT/logs/cache.log),
    when a cached run is still to train (the cache skips what it holds)."""
    if any(r.cached and not is_finished(r, plans[r.budget], request, dataset_name, output) for r in runs):
        from nnkd.cache.compute import CacheRequest, cache_teacher

        with _logged(output, "cache"):
            cache_teacher(CacheRequest(dataset=dataset_name, configuration=request.configuration,
                                       fold=str(request.fold), teacher=request.teacher, device=request.device))


def _results(request: BenchmarkRequest, dataset_name: str, dataset_json: dict, cases: list, device, teacher_info: dict,
             records: list[dict]) -> dict:
    """results.json: the machine, the schedule, the teacher and every run with its ratios, and the summary."""
    results = {"machine": f"{platform.processor() or platform.machine()}, {cpu_count()} CPUs, "
                          f"{torch.get_num_threads()} torch threads, device {device.type}, torch {torch.__version__}",
               "dataset": dataset_name, "configuration": request.configuration, "fold": request.fold,
               "labeled": request.labeled, "validation_cases": cases,
               "schedule": {"epochs": request.num_epochs, "iterations_per_epoch": request.num_iterations_per_epoch,
                            "val_iterations_per_epoch": request.num_val_iterations_per_epoch},
               "seeds": request.seeds, "jobs": request.jobs,
               "labels": {str(v): k for k, v in dataset_json["labels"].items() if k != "background" and k != "ignore"},
               "teacher": teacher_info, "runs": derived_ratios(records, teacher_info)}
    results["summary"] = summarize(results["runs"])
    return results


def run_benchmark(request: BenchmarkRequest) -> dict:
    """Plan, train, measure; write results.json, report.md and the plots to request.output."""
    from nnkd.benchmark.report import write_report
    from nnkd.devices import resolve_device
    from nnkd.teachers.registry import create_teacher

    _check_options(request)  # before anything is written
    paths = require_env("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    # never nnU-Net's raw or preprocessed data, a trained model, or a folder of another command; a rerun adds to
    # (and resumes from) what it wrote before
    output = check_output(request.output, COMMAND, replaces=False)
    output.mkdir(parents=True, exist_ok=True)
    if read_manifest(output) is None:
        write_manifest(output, COMMAND, [])
    env = {**os.environ, "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", str(request.num_processes))}
    device = resolve_device(request.device)
    request.device = device.type
    if request.quick:
        _quick_setup(request, output)
    if request.dataset is None:
        raise NnkdError("no dataset given", "pass -d DATASET_ID (or --quick for the synthetic smoke run)")
    dataset_name = find_dataset_name(request.dataset)
    _check_finished_runs(request, output)

    steps = tqdm(total=3, desc="benchmark: plan, teacher, runs", unit="step")
    plans = _plan(request, dataset_name, output)
    steps.update()
    if request.teacher is None:  # --quick: a briefly trained nnU-Net teacher
        request.teacher = _quick_teacher(request, dataset_name, env, output)
    fold = request.fold if request.fold == "all" else int(request.fold)
    teacher = create_teacher(request.teacher, fold=fold, device=device)
    preprocessed = paths["nnUNet_preprocessed"] / dataset_name
    first = PreprocessedConfiguration.load(dataset_name, plans[request.budgets[0]], None)  # plans and dataset.json
    dataset_json = first.dataset_json
    has_logits = teacher.has_logits and dict(teacher.labels) == dict(dataset_json["labels"])
    runs = _runs(request, has_logits)
    _cache_teacher(runs, plans, request, dataset_name, output)
    steps.update()
    records = _train_runs(runs, plans, request, dataset_name, env, output, device)
    steps.update()
    steps.close()

    cases = split_cases(preprocessed, request.fold, "val")
    images = validation_images(paths["nnUNet_raw"] / dataset_name, cases, dataset_json)
    progress = tqdm(total=(len(records) + 1) * len(images) * len(_runtimes(request)),
                    desc="validation cases predicted (runtimes measured before are not again)")
    teacher_info = _teacher_measurements(teacher, request, dataset_name, first.plans, dataset_json, images, output,
                                         device, progress)
    del teacher
    for record in records:
        record |= _student_measurements(record, request, dataset_name, dataset_json, images, output, device,
                                        progress)
    progress.close()

    results = _results(request, dataset_name, dataset_json, cases, device, teacher_info, records)
    write_json_atomic(output / "results.json", results)
    write_report(results, output)
    return results
