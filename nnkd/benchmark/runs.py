"""Training runs of a benchmark or study: each trains in a process of its own (`nnkd.cli.train_worker`, handed the
run's TrainRequest), in its own results folder under the benchmark's output, skipped when already finished (so a
benchmark resumes); the studies' teacher is trained the same way."""

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nnkd.atomic import write_json_atomic
from nnkd.errors import NnkdError
from nnkd.method_table import BASELINE, METHOD_TRAINERS
from nnkd.plans import DEFAULT_TEACHER_PLANS
from nnkd.records import software_versions
from nnkd.run.train import TrainRequest
from nnkd.run_names import derived_run_name, run_trainer_name, trainer_run_folders

TEACHER_SEED = 0  # the studies' teacher: nnU-Net's default plans trained without distillation, seeded


@dataclass(frozen=True)
class Run:
    budget: str
    method: str
    cached: bool = False  # logit KD from nnkd_cache_teacher's stored predictions
    seed: int = 0
    hp: tuple[tuple[str, str], ...] = ()  # method hyper-parameters (`logit?kd_loss=dice`), passed as --hp

    @property
    def variant(self) -> str:
        """The method with its hyper-parameters, as --methods spells it."""
        return self.method + ("?" + "&".join(f"{k}={v}" for k, v in self.hp) if self.hp else "")

    @property
    def name(self) -> str:
        hp = "@" + ",".join(f"{k}={v}" for k, v in self.hp) if self.hp else ""
        return f"{self.budget}-{self.method}{hp}" + ("-cached" if self.cached else "") + f"-s{self.seed}"

    @property
    def label(self) -> str:
        return self.variant + (" (cached)" if self.cached else "")

    @classmethod
    def from_name(cls, name: str) -> "Run":
        """The run a folder name (`name`) stands for: `tiny-logit@kd_loss=kl,kd_temperature=3-cached-s1`."""
        budget, rest = name.split("-", 1)
        rest, _, seed = rest.rpartition("-s")
        cached = rest.endswith("-cached")
        method, _, hp = rest.removesuffix("-cached").partition("@")
        return cls(budget, method, cached, int(seed), tuple(tuple(p.split("=", 1)) for p in hp.split(",") if p))


def parse_method(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`logit?kd_loss=dice&kd_temperature=1` → ("logit", (("kd_loss", "dice"), ("kd_temperature", "1")))."""
    method, _, query = text.partition("?")
    pairs = []
    for item in filter(None, query.split("&")):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise NnkdError(f"method '{text}': '{item}' is not NAME=VALUE", "e.g. logit?kd_loss=kl+dice")
        pairs.append((name, value))
    return method, tuple(pairs)


def run_command(argv: list, env: dict, log: Path) -> tuple[int, float]:
    """Run `argv` with its output in `log`; (exit code, peak resident memory in MB)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen(list(map(str, argv)), env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024  # Linux reports kB


def train_in_process(request: TrainRequest, env: dict, log: Path) -> float:
    """Train `request` as nnkd_train would, in a process of its own (its peak memory, in MB, is the run's alone):
    the request goes to `nnkd.cli.train_worker` as JSON beside the log, not as command-line arguments. A failed
    training stops with its own error line."""
    handed = log.with_name(f"{log.stem}.request.json")
    write_json_atomic(handed, request.to_json())
    code, peak = run_command([sys.executable, "-m", "nnkd.cli.train_worker", handed], env, log)
    if code != 0:
        tail = log.read_text()[-1500:]
        line = next((x for x in reversed(tail.splitlines()) if x.startswith("nnkd: error:")), tail)
        raise NnkdError(f"training failed during the benchmark ({log}): {line.removeprefix('nnkd: error: ')}",
                        "fix the cause and rerun nnkd_benchmark; finished runs are kept")
    return peak


def study_teacher_folder(results: Path, dataset_name: str, configuration: str,
                         seed: int | None = TEACHER_SEED) -> Path:
    """Where nnkd_train files nnU-Net's default network trained without distillation (a seeded run is filed under
    nnkd's run name, `nnKDTrainer_NoKD@s0`)."""
    trainer = run_trainer_name(METHOD_TRAINERS[BASELINE], derived_run_name([], seed=seed))
    return results / dataset_name / f"{trainer}__{DEFAULT_TEACHER_PLANS}__{configuration}"


def train_study_teacher(dataset_name: str, configuration: str, schedule: dict, device: str | None, env: dict,
                        log: Path, fold: str = "0", seed: int | None = TEACHER_SEED) -> Path:
    """The studies' teacher: nnU-Net's default plans trained without distillation on `schedule` (SCHEDULE_KEYS) into
    env's nnUNet_results, in a process of its own; skipped when finished, continued when it stopped. Its folder."""
    folder = study_teacher_folder(Path(env["nnUNet_results"]), dataset_name, configuration, seed)
    fold_dir = folder / f"fold_{fold}"
    if not (fold_dir / "checkpoint_final.pth").is_file():
        print(f"training the teacher ({schedule.get('num_epochs')} × {schedule.get('num_iterations_per_epoch')} "
              f"iterations) into {folder}")
        train_in_process(TrainRequest(dataset=dataset_name, configuration=configuration, fold=str(fold),
                                      plans=DEFAULT_TEACHER_PLANS, method=BASELINE, seed=seed, device=device,
                                      continue_training=(fold_dir / "checkpoint_latest.pth").is_file(), **schedule),
                         env, log)
    return folder


def fold_folder(results: Path, dataset_name: str, run: Run, plans: str, configuration: str, fold) -> Path:
    """The run's fold folder: each benchmark run has its own results folder, so the one run of its trainer there
    (filed under the run name nnkd_train derived), or nnU-Net's plain name before it is trained."""
    trainer = METHOD_TRAINERS[run.method]
    found = [f / f"fold_{fold}" for f in trainer_run_folders(results / dataset_name, trainer, plans, configuration)
             if (f / f"fold_{fold}").is_dir()]
    return found[0] if len(found) == 1 else results / dataset_name / f"{trainer}__{plans}__{configuration}" / f"fold_{fold}"


def seconds_per_iteration(fold_dir: Path, iterations: int) -> float:
    """Median epoch duration over iterations, the first epoch (warm-up, compilation) left out. The epoch
    includes nnU-Net's validation iterations, which the benchmark keeps at one."""
    from nnkd.checkpoints import load_checkpoint

    logging = load_checkpoint(fold_dir / "checkpoint_final.pth")["logging"]
    durations = [e - s for s, e in zip(logging["epoch_start_timestamps"], logging["epoch_end_timestamps"])]
    return statistics.median(durations[1:] or durations) / iterations


def learning_curve(fold_dir: Path, iterations: int) -> dict:
    """nnU-Net's pseudo Dice per class on the validation patches of each epoch, against training iterations."""
    from nnkd.checkpoints import load_checkpoint

    logging = load_checkpoint(fold_dir / "checkpoint_final.pth")["logging"]
    per_epoch = [[float(v) for v in values] for values in logging["dice_per_class_or_region"]]
    return {"iterations": [(epoch + 1) * iterations for epoch in range(len(per_epoch))],
            "pseudo_dice_per_class": per_epoch}


def run_settings(run: Run, request) -> dict:
    """What a run's result depends on beyond its folder (budget, method, fold, configuration)."""
    return {"epochs": request.num_epochs, "iterations": request.num_iterations_per_epoch, "labeled": request.labeled,
            "teachers": run_teachers(run, request), "seed": run.seed, "hyperparameters": dict(run.hp),
            "val_iterations": request.num_val_iterations_per_epoch}


def check_recorded_settings(run: Run, request, output: Path, teacher_known: bool = True) -> None:
    """A run a previous benchmark finished in `output` must have been trained with the settings this one asks for,
    else it would be reported as this one's: one line naming both. `teacher_known` False (the quick smoke run's
    teacher is named only once it is trained) leaves the teachers to the check before the run is reused."""
    record_file = output / "runs" / run.name / "run.json"
    if not record_file.is_file():
        return
    recorded, wanted = json.loads(record_file.read_text()).get("settings") or {}, run_settings(run, request)
    if not teacher_known:
        recorded, wanted = ({k: v for k, v in d.items() if k != "teachers"} for d in (recorded, wanted))
    if recorded != wanted:
        raise NnkdError(f"{output / 'runs' / run.name} was trained with {recorded}, this benchmark asks for {wanted}",
                        "give another -o, or delete that run's folder to train it again")


def is_finished(run: Run, plans: str, request, dataset_name: str, output: Path) -> bool:
    """The run trained to its end and its record was written (a rerun skips it); one of other settings stops the
    benchmark (check_recorded_settings)."""
    results = output / "runs" / run.name
    fold_dir = fold_folder(results, dataset_name, run, plans, request.configuration, request.fold)
    if not ((fold_dir / "validation" / "summary.json").is_file() and (results / "run.json").is_file()):
        return False
    check_recorded_settings(run, request, output)
    return True


def started_as_asked(run: Run, request, fold_dir: Path) -> bool:
    """The run's folder holds an nnkd_train run whose teacher.json records exactly this run's method, seed,
    schedule, --labeled, teacher(s), cache use and hyper-parameters — one the benchmark was killed during or
    after, or one started by hand beside another job. Finished, it is measured, not trained again; stopped
    part-way, it resumes from its latest checkpoint (nnkd_train --c)."""
    from nnkd.trainers.methods import METHODS
    from nnkd.trainers.run_config import RunConfig

    record = RunConfig.load(fold_dir)
    if record is None or record.method != run.method or record.seed != run.seed or record.labeled != request.labeled:
        return False
    cls = METHODS[run.method]
    wanted = json.loads(json.dumps(cls.default_settings() | cls.coerce_settings(dict(run.hp))))  # as in teacher.json
    return (record.schedule == request.schedule and record.teacher_specs == run_teachers(run, request)
            and record.reads_cache == run.cached
            and {k: record.hyperparameters.get(k) for k in wanted} == wanted)


def run_teachers(run: Run, request) -> list[str]:
    """The teacher specs a run trains with: none for a method without a teacher (the baseline), every --teacher for a
    method that takes several, else the first."""
    from nnkd.trainers.methods import METHODS

    cls = METHODS[run.method]
    if not cls.needs_teacher:
        return []
    return [request.teacher, *request.extra_teachers] if cls.takes_several_teachers else [request.teacher]


def train(run: Run, plans: str, request, dataset_name: str, env: dict, output: Path) -> dict:
    """Train one run unless it finished before; its measurements."""
    results = output / "runs" / run.name
    fold_dir = fold_folder(results, dataset_name, run, plans, request.configuration, request.fold)
    record_file = results / "run.json"
    if is_finished(run, plans, request, dataset_name, output):
        return json.loads(record_file.read_text())
    teachers = run_teachers(run, request)
    started = started_as_asked(run, request, fold_dir)
    if started and (fold_dir / "validation" / "summary.json").is_file() and (fold_dir / "checkpoint_final.pth").is_file():
        peak = None  # trained by nnkd_train in this folder before (the benchmark was not watching its memory)
    else:
        resume = started and (fold_dir / "checkpoint_latest.pth").is_file()
        validate = not resume and started and (fold_dir / "checkpoint_final.pth").is_file()  # stopped validating
        training = TrainRequest(dataset=dataset_name, configuration=request.configuration, fold=str(request.fold),
                                plans=plans, method=run.method, teachers=tuple(teachers), teacher_cache=run.cached,
                                labeled=request.labeled, hyperparameters=dict(run.hp), seed=run.seed,
                                device=request.device, continue_training=resume, validation_only=validate,
                                **request.schedule)
        log = results / ("train_resumed.log" if resume or validate else "train.log")
        peak = train_in_process(training, {**env, "nnUNet_results": str(results)}, log)
    fold_dir = fold_folder(results, dataset_name, run, plans, request.configuration, request.fold)  # named now
    validation = json.loads((fold_dir / "validation" / "summary.json").read_text())

    record = {"run": run.name, "label": run.label, "budget": run.budget, "method": run.method,
              "variant": run.variant, "cached": run.cached, "seed": run.seed, "plans": plans,
              "teachers": len(teachers), "settings": run_settings(run, request), "versions": software_versions(),
              "fold_folder": str(fold_dir),
              "seconds_per_iteration": seconds_per_iteration(fold_dir, request.num_iterations_per_epoch),
              "peak_memory_mb": round(peak, 1) if peak is not None else None,
              "dice": validation["foreground_mean"]["Dice"],
              "dice_per_class": {k: v["Dice"] for k, v in validation["mean"].items()},
              "learning_curve": learning_curve(fold_dir, request.num_iterations_per_epoch)}

    write_json_atomic(record_file, record)
    return record
