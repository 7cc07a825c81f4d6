"""Training runs of a benchmark: one nnkd_train process per (budget, method), each in its own results
folder under the benchmark's output, skipped when already finished (so a benchmark resumes)."""

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nnkd.errors import NnkdError

BIN = Path(sys.executable).parent
TRAINERS = {"none": "nnKDTrainer_NoKD", "logit": "nnKDTrainer_Logit", "feature": "nnKDTrainer_Feature",
            "cka": "nnKDTrainer_CKA", "drd": "nnKDTrainer_DRD", "multiteacher": "nnKDTrainer_MultiTeacher",
            "tskd": "nnKDTrainer_TSKD"}


@dataclass(frozen=True)
class Run:
    budget: str
    method: str
    cached: bool = False  # logit KD from nnkd_cache_teacher's stored predictions

    @property
    def name(self) -> str:
        return f"{self.budget}-{self.method}" + ("-cached" if self.cached else "")

    @property
    def label(self) -> str:
        return self.method + (" (cached teacher)" if self.cached else "")


def run_command(args: list, env: dict, log: Path) -> tuple[int, float]:
    """Run a console script with its output in `log`; (exit code, peak resident memory in MB)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen([str(BIN / args[0]), *map(str, args[1:])], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024  # Linux reports kB


def check(args: list, env: dict, log: Path) -> float:
    code, peak = run_command(args, env, log)
    if code != 0:
        tail = log.read_text()[-1500:]
        line = next((x for x in reversed(tail.splitlines()) if x.startswith("nnkd: error:")), tail)
        raise NnkdError(f"{args[0]} failed during the benchmark ({log}): {line.removeprefix('nnkd: error: ')}",
                        "fix the cause and rerun nnkd_benchmark; finished runs are kept")
    return peak


def fold_folder(results: Path, dataset_name: str, run: Run, plans: str, configuration: str, fold) -> Path:
    return results / dataset_name / f"{TRAINERS[run.method]}__{plans}__{configuration}" / f"fold_{fold}"


def seconds_per_iteration(fold_dir: Path, iterations: int) -> float:
    """Median epoch duration over iterations, the first epoch (warm-up, compilation) left out. The epoch
    includes nnU-Net's validation iterations, which the benchmark keeps at one."""
    from nnkd.teachers.checkpoint import load_checkpoint

    logging = load_checkpoint(fold_dir / "checkpoint_final.pth")["logging"]
    durations = [e - s for s, e in zip(logging["epoch_start_timestamps"], logging["epoch_end_timestamps"])]
    return statistics.median(durations[1:] or durations) / iterations


def run_settings(run: Run, request) -> dict:
    """What a run's result depends on beyond its folder (budget, method, fold, configuration)."""
    return {"epochs": request.epochs, "iterations": request.iterations, "labeled": request.labeled,
            "teachers": run_teachers(run, request)}


def is_finished(run: Run, plans: str, request, dataset_name: str, output: Path) -> bool:
    """The run trained to its end and its record was written (a rerun skips it). A finished run of other
    settings stops the benchmark: it would be reported as this one's."""
    results = output / "runs" / run.name
    fold_dir = fold_folder(results, dataset_name, run, plans, request.configuration, request.fold)
    record_file = results / "run.json"
    if not ((fold_dir / "validation" / "summary.json").is_file() and record_file.is_file()):
        return False
    recorded, wanted = json.loads(record_file.read_text()).get("settings"), run_settings(run, request)
    if recorded != wanted:
        raise NnkdError(f"{results} was trained with {recorded}, this benchmark asks for {wanted}",
                        "give another -o, or delete that run's folder to train it again")
    return True


def run_teachers(run: Run, request) -> list[str]:
    """The teacher specs a run trains with: none for the baseline, every --teacher for multiteacher, else the
    first."""
    if run.method == "none":
        return []
    return [request.teacher, *request.extra_teachers] if run.method == "multiteacher" else [request.teacher]


def train(run: Run, plans: str, request, dataset_name: str, env: dict, output: Path) -> dict:
    """Train one run unless it finished before; its measurements."""
    results = output / "runs" / run.name
    fold_dir = fold_folder(results, dataset_name, run, plans, request.configuration, request.fold)
    summary = fold_dir / "validation" / "summary.json"
    record_file = results / "run.json"
    if is_finished(run, plans, request, dataset_name, output):
        return json.loads(record_file.read_text())
    teachers = run_teachers(run, request)
    teacher_args = [arg for spec in teachers for arg in ("--teacher", spec)]
    teacher_args += ["--teacher-cache"] if run.cached else []
    labeled = ["--labeled", request.labeled] if request.labeled else []
    peak = check(["nnkd_train", dataset_name, request.configuration, request.fold, "-p", plans, "--method",
                  run.method, *teacher_args, *labeled, "--epochs", request.epochs, "--iterations-per-epoch",
                  request.iterations, "--val-iterations-per-epoch", 1, "--device", request.device],
                 {**env, "nnUNet_results": str(results)}, results / "train.log")
    validation = json.loads(summary.read_text())
    record = {"run": run.name, "budget": run.budget, "method": run.method, "cached": run.cached, "plans": plans,
              "teachers": len(teachers), "settings": run_settings(run, request),
              "fold_folder": str(fold_dir),
              "seconds_per_iteration": seconds_per_iteration(fold_dir, request.iterations),
              "peak_memory_mb": round(peak, 1),
              "dice": validation["foreground_mean"]["Dice"],
              "dice_per_class": {k: v["Dice"] for k, v in validation["mean"].items()}}
    from nnkd.atomic import write_json_atomic

    write_json_atomic(record_file, record)
    return record
