"""LoRKD (Low-Rank Knowledge Decomposition, CVPR 2024): one student for several datasets.

nnKDTrainer_LoRKD trains the budget student of the first dataset's plans with a low-rank expert per task in
every convolution and one set of segmentation heads per task (nnkd.trainers.lorkd_model.MultiTaskUNet). Each
task keeps nnU-Net's own pipeline: the trainer runs nnU-Net's dataloader, loss, validation step and final
validation once per task with that task's plans, labels and preprocessed folder standing in for the first
dataset's (`task_context`), and mixes the tasks' samples into every batch (MixedTaskBatches). Each sample goes
through its own task's experts (one grouped convolution per layer), its task's loss and, when the task has a
teacher, KL to that teacher at temperature T = 10.
"""

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from torch import nn

from nnunetv2.run.run_training import run_training
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnkd.atomic import write_bytes_atomic, write_json_atomic
from nnkd.devices import resolve_device
from nnkd.distill.logits import kd_kl_loss
from nnkd.distill.low_rank import tasks as route_tasks
from nnkd.errors import NnkdError
from nnkd.nnunet_env import find_dataset_name, require_env
from nnkd.planners.student_planner import DEFAULT_TEACHER_PLANS, resolve_student_plans
from nnkd.teachers.base import Teacher, TeacherOutput
from nnkd.trainers.lorkd_model import (DEFAULT_ALPHA, DEFAULT_RANK, LORKD_METHOD, LORKD_TRAINER, TASK_FOLDER,
                                       TASKS_FILE, LoRKDTask, LoRKDTasks, MultiTaskUNet, TaskOutputs, TaskPlans,
                                       check_task_fits, select_samples)
from nnkd.trainers.nnkd_trainer import KDStep, check_teacher_fits, nnKDTrainer
from nnkd.trainers.run_config import RunConfig
from nnkd.trainers.train import (CHECKPOINTS, checked_teacher_record, fold_folder, parse_fold,
                                 use_nnkd_trainers)

REPORT_NAME = "lorkd_report"  # fold_X/lorkd_report.json and .md
REPORT_FILES = (f"{REPORT_NAME}.json", f"{REPORT_NAME}.md")


@dataclass
class TrainingTask:
    """One task as the trainer runs it: what stands in for the first dataset inside `task_context`."""
    index: int
    name: str
    plans_manager: PlansManager
    dataset_json: dict
    label_manager: LabelManager
    preprocessed_base: str
    loss: nn.Module | None = None  # nnU-Net's loss for the task's labels (built in initialize)
    teacher: Teacher | None = None

    @property
    def foreground_classes(self) -> int:
        return self.label_manager.num_segmentation_heads - 1


class MixedTaskBatches:
    """Batches of `batch_size` samples whose tasks take turns slot by slot (round-robin, continued from batch to
    batch). Each task's samples come in order from that task's own nnU-Net batches, so every task keeps nnU-Net's
    augmentation and foreground oversampling, and no augmented sample is thrown away."""

    def __init__(self, sources: list, batch_size: int):
        self.sources = sources  # one nnU-Net augmenter (or loader) per task
        self.batch_size = batch_size
        self.pending: list[tuple[dict, int] | None] = [None] * len(sources)  # (batch, next sample) per task
        self.next_task = 0

    def __iter__(self):
        return self

    def _take(self, task: int) -> tuple[dict, int]:
        batch, position = self.pending[task] or (None, 0)
        if batch is None or position == batch["data"].shape[0]:
            batch, position = next(self.sources[task]), 0
        self.pending[task] = (batch, position + 1)
        return batch, position

    def __next__(self) -> dict:
        data, targets, keys, task_ids = [], [], [], []
        for _ in range(self.batch_size):
            task = self.next_task
            self.next_task = (task + 1) % len(self.sources)
            batch, i = self._take(task)
            sample = slice(i, i + 1)
            data.append(batch["data"][sample])
            targets.append(select_samples(batch["target"], sample))
            keys.append(batch["keys"][i])
            task_ids.append(task)
        target = [torch.cat(level) for level in zip(*targets)] if isinstance(targets[0], list) else torch.cat(targets)
        return {"data": torch.cat(data), "target": target, "keys": keys, "task": torch.tensor(task_ids)}

    def finish(self) -> None:
        """Stop the tasks' background workers (nnU-Net's on_train_end only knows its own augmenters)."""
        for source in self.sources:
            if isinstance(source, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
                source._finish()


class MixedTaskLoss(nn.Module):
    """Σ_t (n_t / N)·L_t over the tasks of a mixed batch, L_t being nnU-Net's loss of task t on its own samples, so
    every sample weighs the same whatever its task. `last` keeps the latest per-task values for the epoch log."""

    def __init__(self, losses: list[nn.Module]):
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.last: dict[int, torch.Tensor] = {}

    def forward(self, grouped: dict[int, TaskOutputs], target) -> torch.Tensor:
        samples = sum(len(group.index) for group in grouped.values())
        losses = {task: self.losses[task](group.outputs, select_samples(target, group.index))
                  for task, group in grouped.items()}
        self.last = {task: value.detach() for task, value in losses.items()}
        return sum(value * (len(grouped[task].index) / samples) for task, value in losses.items())


class nnKDTrainer_LoRKD(nnKDTrainer):
    """Shared student, per-task low-rank experts and heads, mixed-task batches; per-task KD when a task has a
    teacher. The tasks come from the fold's tasks.json (written by nnkd_train_lorkd), teachers from teacher.json."""

    method = LORKD_METHOD
    needs_teacher_logits = True
    needs_teacher_features = False
    takes_several_teachers = True  # at most one per task; tasks without one learn from their labels only
    kd_temperature = 10.0  # LoRKD's T
    kd_weight = 1.0
    hyperparameters = ("kd_temperature", "kd_weight")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        record = LoRKDTasks.load(self.output_folder)
        if record is None:
            raise NnkdError(f"{self.output_folder} has no {TASKS_FILE}: {type(self).__name__} trains several "
                            "datasets at once", "start it with nnkd_train_lorkd -d ID ID … (docs/lorkd.md)")
        if record.datasets[0] != self.plans_manager.dataset_name:
            raise NnkdError(f"{TASKS_FILE} in {self.output_folder} starts with {record.datasets[0]}, not "
                            f"{self.plans_manager.dataset_name}", "start the run again with nnkd_train_lorkd")
        self.lorkd = record
        self.training_tasks = [self._training_task(i, task) for i, task in enumerate(record.tasks)]
        self.batch_task_ids: torch.Tensor | None = None  # the current training batch's task per sample

    def _training_task(self, index: int, task: LoRKDTask) -> TrainingTask:
        base = os.path.join(os.path.dirname(self.preprocessed_dataset_folder_base), task.dataset)
        if index == 0:
            plans, dataset_json = self.plans_manager.plans, self.dataset_json
        else:
            plans_file = Path(base) / f"{self.plans_manager.plans_name}.json"
            if not plans_file.is_file():
                raise NnkdError(f"plans {plans_file} not found", f"plan {task.dataset} with nnkd_plan_and_preprocess "
                                f"--plans-from {self.plans_manager.dataset_name}")
            plans, dataset_json = (json.loads(p.read_text()) for p in (plans_file, Path(base) / "dataset.json"))
        first = TaskPlans(self.plans_manager.dataset_name, self.plans_manager.plans, self.dataset_json)
        check_task_fits(first, first if index == 0 else TaskPlans(task.dataset, plans, dataset_json),
                        self.configuration_name)
        if dict(dataset_json["labels"]) != task.labels:
            raise NnkdError(f"the labels of {task.dataset} changed since this run started ({task.labels} → "
                            f"{dataset_json['labels']})", "start a new run without --c")
        manager = PlansManager(plans)
        return TrainingTask(index, task.dataset, manager, dataset_json, manager.get_label_manager(dataset_json), base)

    # ----------------------------------------------------------------- set-up
    @contextmanager
    def task_context(self, task: TrainingTask):
        """Inside, nnU-Net's single-dataset code (dataloaders, loss builder, validation) runs on `task`: its plans,
        labels, preprocessed folder and loss stand in for the first dataset's. The configuration (patch size,
        architecture, preprocessing) is the same for every task, so it is not swapped."""
        names = ("plans_manager", "dataset_json", "label_manager", "preprocessed_dataset_folder_base",
                 "preprocessed_dataset_folder", "dataset_class", "loss")
        saved = {name: getattr(self, name) for name in names}
        self.plans_manager, self.dataset_json, self.label_manager = task.plans_manager, task.dataset_json, \
            task.label_manager
        self.preprocessed_dataset_folder_base = task.preprocessed_base
        self.preprocessed_dataset_folder = os.path.join(task.preprocessed_base,
                                                        self.configuration_manager.data_identifier)
        self.dataset_class = None  # nnU-Net infers it from the task's folder when it needs it
        self.loss = task.loss
        try:
            yield task
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    def initialize(self):
        if self.is_ddp:
            raise NnkdError(f"{type(self).__name__} trains on one device", "run it without -num_gpus")
        super().initialize()
        counts = self.student_network().parameter_counts()
        self.print_to_log_file(f"LoRKD: {len(self.training_tasks)} tasks, rank {self.lorkd.rank}, alpha "
                               f"{self.lorkd.alpha}; shared parameters {counts['shared']}, experts "
                               f"{counts['expert']} per task")
        for task, heads in zip(self.training_tasks, counts["heads"]):
            teacher = task.teacher.spec if task.teacher is not None else "none (labels only)"
            self.print_to_log_file(f"LoRKD task {task.index}: {task.name}, labels {task.dataset_json['labels']}, "
                                   f"head parameters {heads}, teacher {teacher}")

    def setup_teachers(self) -> None:
        """Each teacher.json entry names its task's dataset; it must fit that task's plans and labels."""
        for entry in (self.run_config.teachers if self.run_config else None) or []:
            task = next((t for t in self.training_tasks if t.name == entry.get("dataset")), None)
            if task is None:
                raise NnkdError(f"teacher.json names a teacher for {entry.get('dataset')}, which is not a task of "
                                "this run", "start the run again with nnkd_train_lorkd")
            teacher = self.build_teacher(entry)
            check_teacher_fits(teacher, type(self), task.plans_manager, self.configuration_name, task.dataset_json)
            task.teacher = teacher

    def build_network_architecture(self, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's network of the plans, turned into the multi-task student (experts and per-task heads)."""
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        return MultiTaskUNet.from_stock(network, [t.label_manager.num_segmentation_heads for t in self.training_tasks],
                                        self.lorkd.rank, self.lorkd.alpha)

    def _do_i_compile(self):
        """No torch.compile: the routing lives in module attributes that change every step."""
        return False

    def _build_loss(self):
        """Each task's own nnU-Net loss (its labels, ignore label, deep supervision), combined per mixed batch."""
        for task in self.training_tasks:
            with self.task_context(task):
                task.loss = super()._build_loss()
        return MixedTaskLoss([task.loss for task in self.training_tasks])

    def set_deep_supervision_enabled(self, enabled: bool):
        network = self.student_network()
        (network.backbone if isinstance(network, MultiTaskUNet) else network).decoder.deep_supervision = enabled

    def get_dataloaders(self):
        """nnU-Net's dataloaders of each task (its own folder, split, labels and transforms), mixed batch by batch."""
        loaders = []
        for task in self.training_tasks:
            with self.task_context(task):
                loaders.append(super().get_dataloaders())
        train, val = zip(*loaders)
        return MixedTaskBatches(list(train), self.batch_size), MixedTaskBatches(list(val), self.batch_size)

    def on_train_start(self):
        super().on_train_start()
        for task in self.training_tasks[1:]:  # nnU-Net unpacks the first dataset's preprocessed cases
            with self.task_context(task):
                infer_dataset_class(self.preprocessed_dataset_folder).unpack_dataset(
                    self.preprocessed_dataset_folder, overwrite_existing=False,
                    num_processes=max(1, round(get_allowed_n_proc_DA() // 2)), verify=True)
        for task in self.training_tasks:  # what nnkd_predict and nnkd_export need of each task
            folder = Path(self.output_folder_base) / TASK_FOLDER / task.name
            write_json_atomic(folder / "plans.json", task.plans_manager.plans)
            write_json_atomic(folder / "dataset.json", task.dataset_json)
            write_bytes_atomic(folder / "dataset_fingerprint.json",
                               (Path(task.preprocessed_base) / "dataset_fingerprint.json").read_bytes())

    def on_train_end(self):
        super().on_train_end()
        for loader in (self.dataloader_train, self.dataloader_val):
            if isinstance(loader, MixedTaskBatches):
                loader.finish()

    # ------------------------------------------------------------------ step
    def train_step(self, batch: dict) -> dict:
        self.batch_task_ids = batch["task"].to(self.device, non_blocking=True)
        return super().train_step(batch)

    def student_forward(self, data: torch.Tensor):
        return None, self.student_network().forward_tasks(data, self.batch_task_ids)

    def teach(self, data: torch.Tensor) -> dict[int, TeacherOutput]:
        """Each task's teacher on that task's samples only, without gradients."""
        outputs = {}
        with torch.no_grad():
            for task in self.training_tasks:
                index = (self.batch_task_ids == task.index).nonzero(as_tuple=True)[0]
                if task.teacher is not None and len(index):
                    outputs[task.index] = task.teacher(data[index])
        return outputs

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        """KL(teacher_t ‖ student) × T² on each taught task's samples, weighted by their share of the batch; the
        per-task segmentation and KD values go to the log (NaN for a task absent from the batch)."""
        missing = step.data.new_tensor(float("nan"))
        kd = step.data.new_zeros(())
        for task in self.training_tasks:
            group = step.outputs.get(task.index)
            step.log[f"task_{task.name}_seg"] = self.loss.last.get(task.index, missing)
            if task.teacher is None:
                continue
            if group is None:
                step.log[f"task_{task.name}_kd"] = missing
                continue
            logits = group.outputs[0] if isinstance(group.outputs, list) else group.outputs
            teacher = step.teacher[task.index]
            kl = kd_kl_loss(logits, teacher.logits, self.kd_temperature, regions=task.label_manager.has_regions,
                            mask=teacher.valid)
            kd = kd + kl * (len(group.index) / step.data.shape[0])
            step.log[f"task_{task.name}_kd"] = kl.detach()
        return {"kl": self.kd_weight * kd} if any(t.teacher is not None for t in self.training_tasks) else {}

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step on each task's samples with that task's expert, heads, labels and loss. The
        pseudo-Dice counts of all tasks' classes are laid side by side (zeros for a task absent from the batch),
        so nnU-Net's epoch-end Dice and EMA work on them unchanged."""
        network = self.student_network()
        losses, counts = [], {}
        for task in self.training_tasks:
            index = (batch["task"] == task.index).nonzero(as_tuple=True)[0]
            if not len(index):
                continue
            with self.task_context(task), route_tasks(network, task.index):
                result = super().validation_step({"data": batch["data"][index],
                                                  "target": select_samples(batch["target"], index)})
            losses.append(result["loss"] * len(index))
            counts[task.index] = result
        merged = {"loss": np.sum(losses) / batch["data"].shape[0]}
        for key in ("tp_hard", "fp_hard", "fn_hard"):
            merged[key] = np.concatenate([counts[t.index][key] if t.index in counts else np.zeros(t.foreground_classes)
                                          for t in self.training_tasks])
        return merged

    # ------------------------------------------------------- logging, plots
    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        for task in self.training_tasks:
            values = {}
            for term in ("seg", "kd"):
                key = f"task_{task.name}_{term}"
                if key not in train_outputs[0]:
                    continue  # a task without a teacher has no KD term
                seen = [float(o[key]) for o in train_outputs if not np.isnan(o[key])]  # NaN: not in that batch
                values[term] = float(np.mean(seen)) if seen else float("nan")
                entries = self.kd_log.setdefault(f"{term}_{task.name}", [])
                del entries[self.current_epoch:]  # a resumed epoch replaces its old entry
                entries.append(values[term])
            self.print_to_log_file(f"task {task.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        super().on_validation_epoch_end(val_outputs)
        dice = self.logger.get_value("dice_per_class_or_region", step=-1)
        start = 0
        for task in self.training_tasks:
            end = start + task.foreground_classes
            self.print_to_log_file(f"task {task.name}: pseudo Dice {[round(float(d), 4) for d in dice[start:end]]}")
            start = end

    # ------------------------------------------------------------ validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation once per task, on that task's validation cases, with the task's fused stock
        network (what nnkd_export writes), into fold_X/tasks/<dataset>/validation; then the per-task report."""
        network, output_folder = self.network, self.output_folder
        student = self.student_network()
        try:
            for task in self.training_tasks:
                self.network = student.fused(task.index).to(self.device)
                self.output_folder = os.path.join(output_folder, TASK_FOLDER, task.name)
                with self.task_context(task):
                    super().perform_actual_validation(save_probabilities)
        finally:
            self.network, self.output_folder = network, output_folder
        if self.local_rank == 0:
            report = self.write_report()
            for entry in report["tasks"]:
                self.print_to_log_file(f"LoRKD task {entry['dataset']}: validation Dice {entry['dice']:.4f}")

    def write_report(self) -> dict:
        """fold_X/lorkd_report.json and .md: per task its Dice (nnU-Net's evaluation of its validation cases) and
        the parameters it uses: shared backbone, its experts, its heads, and its fused (deployed) network."""
        counts = self.student_network().parameter_counts()
        entries = []
        for task, heads in zip(self.training_tasks, counts["heads"]):
            summary = json.loads((Path(self.output_folder) / TASK_FOLDER / task.name / "validation" /
                                  "summary.json").read_text())
            names = {str(v): k for k, v in task.dataset_json["labels"].items()}
            entries.append({
                "dataset": task.name, "labels": task.dataset_json["labels"],
                "teacher": task.teacher.spec if task.teacher is not None else None,
                "dice": summary["foreground_mean"]["Dice"],
                "dice_per_label": {names.get(str(k), str(k)): v["Dice"] for k, v in summary["mean"].items()},
                "expert_parameters": counts["expert"], "head_parameters": heads,
                "shared_parameters": counts["shared"], "deployed_parameters": counts["shared"] + heads,
            })
        report = {"method": self.method, "rank": self.lorkd.rank, "alpha": self.lorkd.alpha,
                  "kd_temperature": self.kd_temperature, "configuration": self.configuration_name,
                  "fold": self.fold, "trained_parameters": counts["shared"] + sum(
                      counts["expert"] + e["head_parameters"] for e in entries), "tasks": entries}
        folder = Path(self.output_folder)
        write_json_atomic(folder / REPORT_FILES[0], report)
        write_bytes_atomic(folder / REPORT_FILES[1], report_markdown(report).encode())
        return report


def report_markdown(report: dict) -> str:
    lines = [f"# LoRKD: {len(report['tasks'])} tasks, {report['configuration']} fold {report['fold']}", "",
             f"Rank {report['rank']}, alpha {report['alpha']}, KD temperature {report['kd_temperature']}; "
             f"{report['trained_parameters']:,} parameters trained in all (shared backbone, every task's experts "
             "and heads). Each task deploys as a stock network of shared + head parameters (its experts fused).", "",
             "| task | teacher | validation Dice | Dice per label | expert params | head params | shared params "
             "| deployed params |", "|---|---|---|---|---|---|---|---|"]
    for e in report["tasks"]:
        per_label = ", ".join(f"{name} {dice:.3f}" for name, dice in e["dice_per_label"].items())
        lines.append(f"| {e['dataset']} | {e['teacher'] or '—'} | {e['dice']:.4f} | {per_label} | "
                     f"{e['expert_parameters']:,} | {e['head_parameters']:,} | {e['shared_parameters']:,} | "
                     f"{e['deployed_parameters']:,} |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------- nnkd_train_lorkd
@dataclass
class LoRKDRequest:
    datasets: tuple[str, ...]  # the first names the run's folder; expert order
    configuration: str
    fold: str
    budget: str | None = None
    plans: str | None = None
    teacher_plans: str = DEFAULT_TEACHER_PLANS
    teachers: tuple[tuple[str, str], ...] = ()  # (dataset ID or name, teacher spec) per --teacher
    rank: int | None = None  # None: DEFAULT_RANK, or the recorded value with --c
    alpha: float | None = None
    num_epochs: int | None = None
    num_iterations_per_epoch: int | None = None
    num_val_iterations_per_epoch: int | None = None
    device: str | None = None
    continue_training: bool = False
    npz: bool = False


def _task_plans(preprocessed: Path, name: str, plans_name: str, first: str) -> TaskPlans:
    plans_file = preprocessed / name / f"{plans_name}.json"
    if not plans_file.is_file():
        hint = f"-d {name}" if name == first else f"-d {name} --plans-from {first}"
        raise NnkdError(f"plans {plans_file} not found", f"plan first: nnkd_plan_and_preprocess {hint} --budget …")
    return TaskPlans(name, json.loads(plans_file.read_text()),
                     json.loads((preprocessed / name / "dataset.json").read_text()))


def _teacher_specs(request: LoRKDRequest, names: list[str]) -> dict[str, str]:
    """dataset name -> teacher spec; each --teacher must name one of the datasets being trained, once."""
    specs = {}
    for given, spec in request.teachers:
        name = find_dataset_name(given)
        if name not in names:
            raise NnkdError(f"--teacher {given}=… names {name}, which is not one of -d {' '.join(request.datasets)}",
                            "give a teacher only for the datasets being trained")
        if name in specs:
            raise NnkdError(f"two --teacher for {name}", "give at most one teacher per dataset")
        specs[name] = spec
    return specs


def train_lorkd(request: LoRKDRequest) -> Path:
    """Check the tasks, record tasks.json and teacher.json, train (or resume) one fold; return its folder."""
    paths = require_env("nnUNet_preprocessed", "nnUNet_results")
    names = [find_dataset_name(d) for d in request.datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise NnkdError(f"-d lists {', '.join(repeated)} more than once", "give each dataset once")
    fold = parse_fold(str(request.fold))
    plans_name = resolve_student_plans(request.budget, request.plans, request.teacher_plans)
    preprocessed = paths["nnUNet_preprocessed"]
    task_plans = [_task_plans(preprocessed, name, plans_name, names[0]) for name in names]
    for task in task_plans:
        check_task_fits(task_plans[0], task, request.configuration)
    teachers = _teacher_specs(request, names)
    device = resolve_device(request.device)

    folder = fold_folder(paths["nnUNet_results"], names[0], LORKD_TRAINER, plans_name, request.configuration, fold)
    for other in sorted(folder.parent.glob(f"fold_*/{TASKS_FILE}")):
        recorded = LoRKDTasks.load(other.parent)
        if other.parent != folder and recorded.datasets != names:
            raise NnkdError(f"{other.parent.name} of {folder.parent} was trained on {', '.join(recorded.datasets)}",
                            "train every fold of a LoRKD model on the same -d list, in the same order")
    schedule = {k: getattr(request, k) for k in ("num_epochs", "num_iterations_per_epoch",
                                                    "num_val_iterations_per_epoch") if getattr(request, k)}
    if request.continue_training:
        recorded, existing = LoRKDTasks.load(folder), RunConfig.load(folder)
        if recorded is None or existing is None or not any((folder / c).is_file() for c in CHECKPOINTS):
            raise NnkdError(f"nothing to resume in {folder}", "start the training without --c")
        if existing.method != LORKD_METHOD:
            raise NnkdError(f"{folder} holds a {existing.method} run, not LoRKD", "start a new run without --c")
        if recorded.datasets != names:
            raise NnkdError(f"this run was started with -d {' '.join(recorded.datasets)}",
                            "resume with the same -d list, or start a new run")
        for option, given, value in (("--rank", request.rank, recorded.rank), ("--alpha", request.alpha,
                                                                                 recorded.alpha)):
            if given is not None and given != value:
                raise NnkdError(f"this run was started with {option} {value}, not {given}",
                                f"drop {option} when resuming, or start a new run")
        started = {e["dataset"]: e["spec"] for e in existing.teachers or []}
        if teachers and teachers != started:
            raise NnkdError(f"this run was started with teachers {started or 'none'}",
                            "drop --teacher when resuming, or start a new run")
        existing.schedule.update(schedule)
        existing.save(folder)
    else:
        records = [{"dataset": name, **checked_teacher_record(spec, nnKDTrainer_LoRKD, preprocessed / name /
                                                             f"{plans_name}.json", request.configuration, fold)}
                   for name, spec in teachers.items()]  # each teacher loaded once on the CPU and checked
        record = LoRKDTasks(
            tasks=[LoRKDTask(t.name, dict(t.dataset_json["labels"]), teachers.get(t.name)) for t in task_plans],
            rank=request.rank if request.rank is not None else DEFAULT_RANK,
            alpha=float(request.alpha) if request.alpha is not None else DEFAULT_ALPHA)
        hyperparameters = {name: getattr(nnKDTrainer_LoRKD, name) for name in nnKDTrainer_LoRKD.hyperparameters}
        run = RunConfig(method=LORKD_METHOD, trainer=LORKD_TRAINER, teachers=records,
                        hyperparameters=hyperparameters, schedule=schedule)
        shutil.rmtree(folder / TASK_FOLDER, ignore_errors=True)  # a new run replaces an old run's validation
        for name in REPORT_FILES:
            (folder / name).unlink(missing_ok=True)
        record.save(folder)
        run.save(folder)

    use_nnkd_trainers()

    run_training(names[0], request.configuration, fold, LORKD_TRAINER, plans_name,
                 export_validation_probabilities=request.npz, continue_training=request.continue_training,
                 device=device)
    report = folder / REPORT_FILES[0]
    if report.is_file():
        for entry in json.loads(report.read_text())["tasks"]:
            print(f"nnkd: LoRKD {plans_name} {request.configuration} fold {fold}, task {entry['dataset']}: "
                  f"validation Dice {entry['dice']:.4f}")
        print(f"nnkd: per-task report {folder / REPORT_FILES[1]}")
    return folder
