"""Several datasets in one nnU-Net training: the multi-dataset machinery LoRKD's trainer is built on.

`MultiDatasetTrainer` is a mixin for an nnKDTrainer whose run trains one student on several datasets ("tasks")
at once. Each task keeps nnU-Net's own pipeline: the trainer runs nnU-Net's dataloader, loss, validation step
and final validation once per task with that task's plans, labels and preprocessed folder standing in for the
first dataset's (`task_context`), and mixes the tasks' samples into every batch (MixedTaskBatches). The method
on top (nnkd.trainers.lorkd) decides the network, how it is routed to a task, and what is distilled.
"""

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnkd.atomic import write_bytes_atomic, write_json_atomic
from nnkd.errors import NnkdError
from nnkd.models.lorkd import TASK_FOLDER, LoRKDTask, TaskOutputs, TaskPlans, check_task_fits, select_samples
from nnkd.nnunet_compat import finish_loader
from nnkd.plans import PreprocessedConfiguration
from nnkd.teachers.base import Teacher


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
            finish_loader(source)


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


class MultiDatasetTrainer:
    """Mixin (before nnKDTrainer in the bases): nnU-Net's single-dataset pipeline run per task, batches that mix
    the tasks, per-task losses, validation and logs. `training_tasks` is set by `setup_tasks` in __init__."""

    training_tasks: list[TrainingTask]

    def setup_tasks(self, tasks: list[LoRKDTask]) -> None:
        """`training_tasks` from the run's recorded tasks (the first is the dataset nnU-Net was started on)."""
        self.training_tasks = [self._training_task(i, task) for i, task in enumerate(tasks)]
        self.batch_task_ids: torch.Tensor | None = None  # the current training batch's task per sample

    def _training_task(self, index: int, task: LoRKDTask) -> TrainingTask:
        base = os.path.join(os.path.dirname(self.preprocessed_dataset_folder_base), task.dataset)
        if index == 0:
            plans, dataset_json = self.plans_manager.plans, self.dataset_json
        else:
            config = PreprocessedConfiguration.load(
                task.dataset, self.plans_manager.plans_name, None,
                hint=f"plan {task.dataset} with nnkd_plan_and_preprocess --plans-from {self.plans_manager.dataset_name}")
            plans, dataset_json = config.plans, config.dataset_json
        first = TaskPlans(self.plans_manager.dataset_name, self.plans_manager.plans, self.dataset_json)
        check_task_fits(first, first if index == 0 else TaskPlans(task.dataset, plans, dataset_json),
                        self.configuration_name)
        if dict(dataset_json["labels"]) != task.labels:
            raise NnkdError(f"the labels of {task.dataset} changed since this run started ({task.labels} → "
                            f"{dataset_json['labels']})", "start a new run without --c")
        manager = PlansManager(plans)
        return TrainingTask(index, task.dataset, manager, dataset_json, manager.get_label_manager(dataset_json), base)

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

    def task_network_context(self, task: TrainingTask):
        """Around a task's validation step: route the student to that task (default: nothing to route)."""
        return nullcontext()

    def task_network(self, student: nn.Module, task: TrainingTask) -> nn.Module:
        """The network nnU-Net's final validation runs for a task, made from the plain student (default: itself)."""
        return student

    def _build_loss(self):
        """Each task's own nnU-Net loss (its labels, ignore label, deep supervision), combined per mixed batch."""
        for task in self.training_tasks:
            with self.task_context(task):
                task.loss = super()._build_loss()
        return MixedTaskLoss([task.loss for task in self.training_tasks])

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

    def train_step(self, batch: dict) -> dict:
        self.batch_task_ids = batch["task"].to(self.device, non_blocking=True)
        return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step on each task's samples inside its `task_network_context`, with its labels and loss. The
        pseudo-Dice counts of all tasks' classes are laid side by side (zeros for a task absent from the batch),
        so nnU-Net's epoch-end Dice and EMA work on them unchanged."""
        losses, counts = [], {}
        for task in self.training_tasks:
            index = (batch["task"] == task.index).nonzero(as_tuple=True)[0]
            if not len(index):
                continue
            with self.task_context(task), self.task_network_context(task):
                result = super().validation_step({"data": batch["data"][index],
                                                  "target": select_samples(batch["target"], index)})
            losses.append(result["loss"] * len(index))
            counts[task.index] = result
        merged = {"loss": np.sum(losses) / batch["data"].shape[0]}
        for key in ("tp_hard", "fp_hard", "fn_hard"):
            merged[key] = np.concatenate([counts[t.index][key] if t.index in counts else np.zeros(t.foreground_classes)
                                          for t in self.training_tasks])
        return merged

    def on_train_epoch_end(self, train_outputs: list[dict]):
        """Per-task epoch means of what the method logs per step as step.log["task_<dataset>_seg"] and
        ["task_<dataset>_kd"] (NaN for a step without that task's samples)."""
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

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation once per task, on that task's validation cases, with `task_network(task)`,
        into fold_X/tasks/<dataset>/validation."""
        network, output_folder = self.network, self.output_folder
        student = self.student_network()
        try:
            for task in self.training_tasks:
                self.network = self.task_network(student, task).to(self.device)
                self.output_folder = os.path.join(output_folder, TASK_FOLDER, task.name)
                with self.task_context(task):
                    super().perform_actual_validation(save_probabilities)
        finally:
            self.network, self.output_folder = network, output_folder
