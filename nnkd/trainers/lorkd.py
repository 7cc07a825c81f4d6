"""LoRKD (Low-Rank Knowledge Decomposition, CVPR 2024): one student for several datasets.

nnKDTrainer_LoRKD trains the budget student of the first dataset's plans with a low-rank expert per task in
every convolution and one set of segmentation heads per task (nnkd.models.lorkd.MultiTaskUNet), on the
multi-dataset machinery of nnkd.trainers.multi_dataset (nnU-Net's pipeline per task, mixed-task batches). Each
sample goes through its own task's experts (one grouped convolution per layer), its task's loss and, when the
task has a teacher, KL to that teacher at temperature T = 10. The launcher is nnkd.run.lorkd.
"""

import json
from pathlib import Path

import torch
from torch import nn

from nnkd.atomic import write_bytes_atomic, write_json_atomic
from nnkd.distill.logits import kd_kl_loss
from nnkd.distill.low_rank import tasks as route_tasks
from nnkd.errors import NnkdError
from nnkd.method_table import LORKD_METHOD
from nnkd.models.lorkd import TASK_FOLDER, TASKS_FILE, LoRKDTasks, MultiTaskUNet
from nnkd.teachers.base import TeacherOutput
from nnkd.teachers.fit import check_teacher_fits
from nnkd.trainers.multi_dataset import MultiDatasetTrainer, TrainingTask
from nnkd.trainers.nnkd_trainer import KDStep, nnKDTrainer
from nnkd.trainers.settings import Rule

REPORT_NAME = "lorkd_report"  # fold_X/lorkd_report.json and .md
REPORT_FILES = (f"{REPORT_NAME}.json", f"{REPORT_NAME}.md")


class nnKDTrainer_LoRKD(MultiDatasetTrainer, nnKDTrainer):
    """Shared student, per-task low-rank experts and heads, mixed-task batches; per-task KD when a task has a
    teacher. The tasks come from the fold's tasks.json (written by nnkd_train_lorkd), teachers from teacher.json."""

    method = LORKD_METHOD
    needs_teacher_logits = True
    needs_teacher_features = False
    takes_several_teachers = True  # at most one per task; tasks without one learn from their labels only
    kd_temperature = 10.0  # LoRKD's T
    kd_weight = 1.0
    hyperparameters = ("kd_temperature", "kd_weight")
    hyperparameter_rules = {"kd_temperature": Rule(positive=True), "kd_weight": Rule(minimum=0)}

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
        self.setup_tasks(record.tasks)

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
            task = next((t for t in self.training_tasks if t.name == entry.dataset), None)
            if task is None:
                raise NnkdError(f"teacher.json names a teacher for {entry.dataset}, which is not a task of "
                                "this run", "start the run again with nnkd_train_lorkd")
            teacher = self.build_teacher(entry)
            check_teacher_fits(teacher, task.plans_manager, self.configuration_name, task.dataset_json, True,
                               f"method {self.method}")
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

    def set_deep_supervision_enabled(self, enabled: bool):
        network = self.student_network()
        (network.backbone if isinstance(network, MultiTaskUNet) else network).decoder.deep_supervision = enabled

    def task_network_context(self, task: TrainingTask):
        """A task's samples go through its own experts and heads."""
        return route_tasks(self.student_network(), task.index)

    def task_network(self, student: nn.Module, task: TrainingTask) -> nn.Module:
        """The task's fused stock network: what nnkd_export writes and nnkd_predict runs."""
        return student.fused(task.index)

    def student_forward(self, data: torch.Tensor):
        return None, self.student_network().forward_tasks(data, self.batch_task_ids)

    def teach(self, data: torch.Tensor) -> dict[int, TeacherOutput]:
        """Each task's teacher on that task's samples only, without gradients."""
        outputs = {}
        for task in self.training_tasks:
            index = (self.batch_task_ids == task.index).nonzero(as_tuple=True)[0]
            if task.teacher is not None and len(index):
                outputs[task.index] = task.teacher.infer(data[index])
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

    def perform_actual_validation(self, save_probabilities: bool = False):
        """The multi-dataset final validation (each task's fused stock network on its validation cases), then the
        per-task report."""
        super().perform_actual_validation(save_probabilities)
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
