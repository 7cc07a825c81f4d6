"""LoRKD's multi-task student and the record of its tasks, shared by the trainer, nnkd_predict and nnkd_export.

The student is the budget plans' stock network (the backbone) with one low-rank expert per task in every
convolution (nnkd.distill.low_rank) and identities in place of its segmentation heads (`decoder.seg_layers`),
plus one set of 1×1 heads per task, since tasks may have different label sets. Fusing task t folds its experts
into plain convolutions (W0 + (α/r)·B_t A_t) and puts its own heads back: a stock nnU-Net network of exactly the
plain student's size. Nothing here imports a trainer, so inference builds the network without one.
"""

import copy
import json
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from nnkd.distill.low_rank import LowRankExpertConv, attach_experts, expert_parameter_counts, fuse_experts, tasks
from nnkd.errors import NnkdError
from nnkd.method_table import LORKD_METHOD, LORKD_TRAINER  # noqa: F401 (re-exported for LoRKD code)
from nnkd.records import JsonRecord

TASKS_FILE = "tasks.json"  # in each fold folder, beside teacher.json
# Per-task sub-folders: the model folder's tasks/<dataset>/ holds the task's plans.json, dataset.json and
# dataset_fingerprint.json; a fold's tasks/<dataset>/validation holds nnU-Net's validation of that task.
TASK_FOLDER = "tasks"
DEFAULT_RANK = 4  # LoRKD's code
DEFAULT_ALPHA = 16.0


@dataclass
class LoRKDTask:
    dataset: str  # DatasetXXX_Name
    labels: dict  # the dataset's labels, as in its dataset.json
    teacher: str | None = None  # teacher spec; None: the task learns from its labels only


@dataclass
class LoRKDTasks(JsonRecord):
    """tasks.json: the tasks of a LoRKD run in expert order (the first is the dataset the run is filed under)."""
    FILE = TASKS_FILE
    tasks: list[LoRKDTask]
    rank: int = DEFAULT_RANK
    alpha: float = DEFAULT_ALPHA

    @property
    def datasets(self) -> list[str]:
        return [t.dataset for t in self.tasks]

    @classmethod
    def from_json(cls, data: dict) -> "LoRKDTasks":
        return cls(tasks=[LoRKDTask(**t) for t in data.pop("tasks")], **data)

    def find(self, task: str) -> int:
        """The expert index of a task given as dataset ID (991) or name (Dataset991_Synthetic)."""
        text = str(task)
        for index, name in enumerate(self.datasets):
            if text == name or (text.isdigit() and int(text) == int(name[len("Dataset"):len("Dataset") + 3])):
                return index
        raise NnkdError(f"task '{task}' is not one of this LoRKD student's tasks ({', '.join(self.datasets)})",
                        "pass --task with one of them")


class TaskOutputs(NamedTuple):
    index: torch.Tensor  # positions of the task's samples in the mixed batch
    outputs: torch.Tensor | list[torch.Tensor]  # the task's outputs for them, in nnU-Net's format


def select_samples(batch: torch.Tensor | list[torch.Tensor], index: torch.Tensor):
    """The samples `index` of a tensor, or of each deep-supervision level of a list."""
    return [level[index] for level in batch] if isinstance(batch, (list, tuple)) else batch[index]


class MultiTaskUNet(nn.Module):
    """A backbone with per-task low-rank experts and per-task segmentation heads.

    `backbone` is the stock network with experts attached and identities in place of decoder.seg_layers, so it
    returns decoder features (one map per deep-supervision level); `heads[t]` are task t's 1×1 convolutions, in
    decoder.seg_layers' order. Route with nnkd.distill.low_rank.tasks(network, ids): the heads follow the experts.
    """

    def __init__(self, backbone: nn.Module, heads: nn.ModuleList):
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    @classmethod
    def from_stock(cls, network: nn.Module, head_channels: list[int], rank: int, alpha: float) -> "MultiTaskUNet":
        """Turn a stock nnU-Net network (modified in place) into the multi-task student: one head set per entry of
        `head_channels` (each task's number of segmentation outputs), initialised as the architecture initialises
        its own, and experts of rank `rank` in every convolution but the heads."""
        seg_layers = network.decoder.seg_layers
        heads = nn.ModuleList(
            nn.ModuleList(type(layer)(layer.in_channels, channels, 1, 1, 0, bias=True) for layer in seg_layers)
            for channels in head_channels)
        if hasattr(network, "initialize"):  # dynamic_network_architectures' He initialisation
            heads.apply(network.initialize)
        network.decoder.seg_layers = nn.ModuleList(nn.Identity() for _ in seg_layers)
        attach_experts(network, len(head_channels), rank, alpha)
        return cls(network, heads.to(next(network.parameters()).device))

    @property
    def num_tasks(self) -> int:
        return len(self.heads)

    def apply_heads(self, task: int, features):
        """Task `task`'s outputs from decoder features: a list (full resolution first) under deep supervision."""
        heads = self.heads[task]
        if isinstance(features, (list, tuple)):
            return [heads[len(heads) - 1 - level](f) for level, f in enumerate(features)]
        return heads[-1](features)

    def forward(self, x: torch.Tensor):
        """The routed task's outputs, as the stock network gives them (what nnU-Net's validation step and
        predictor call): inside `with tasks(network, t):`."""
        routed = next(m for m in self.backbone.modules() if isinstance(m, LowRankExpertConv)).task_ids
        if not isinstance(routed, int):
            raise RuntimeError("MultiTaskUNet.forward runs one task: route with tasks(network, t), or call "
                               "forward_tasks for a mixed batch")
        return self.apply_heads(routed, self.backbone(x))

    def forward_tasks(self, x: torch.Tensor, task_ids: torch.Tensor) -> dict[int, TaskOutputs]:
        """Each task's outputs for its own samples of a mixed batch: one backbone pass in which every sample runs
        through its task's experts (one grouped convolution per layer), then each task's heads on its samples."""
        task_ids = task_ids.to(x.device)
        with tasks(self.backbone, task_ids):
            features = self.backbone(x)
        grouped = {}
        for task in task_ids.unique().tolist():
            index = (task_ids == task).nonzero(as_tuple=True)[0]
            grouped[task] = TaskOutputs(index, self.apply_heads(task, select_samples(features, index)))
        return grouped

    def fused(self, task: int) -> nn.Module:
        """Task `task` as a stock network (a copy): its experts folded into plain convolutions, its own heads."""
        network = fuse_experts(self.backbone, task)
        network.decoder.seg_layers = copy.deepcopy(self.heads[task])
        network.decoder.num_classes = network.decoder.seg_layers[0].out_channels
        return network

    def parameter_counts(self) -> dict[str, int | list[int]]:
        """Parameters shared by all tasks (the backbone), of one task's experts, and of each task's heads."""
        shared, expert = expert_parameter_counts(self.backbone)
        return {"shared": shared, "expert": expert,
                "heads": [sum(p.numel() for p in heads.parameters()) for heads in self.heads]}


def build_multi_task_network(plans: dict, configuration: str, dataset_json: dict, record: LoRKDTasks,
                             deep_supervision: bool = False) -> MultiTaskUNet:
    """The multi-task student of a trained run, to load its checkpoint into (no trainer needed)."""
    from nnkd.plans import network_from_plans, num_segmentation_heads

    backbone = network_from_plans(plans, configuration, dataset_json, deep_supervision, allow_init=False)
    head_channels = [num_segmentation_heads(plans, {"labels": t.labels}) for t in record.tasks]
    return MultiTaskUNet.from_stock(backbone, head_channels, record.rank, record.alpha)


@dataclass
class TaskPlans:
    """One task's student plans and dataset.json, as planned in nnUNet_preprocessed."""
    name: str
    plans: dict
    dataset_json: dict


def check_task_fits(first: TaskPlans, task: TaskPlans, configuration: str) -> None:
    """Tasks share one student and mix in one batch: same input channels, label maps (not regions), and the same
    preprocessing and architecture (what `nnkd_plan_and_preprocess --plans-from` gives them)."""
    from nnkd.plans import num_input_channels

    if task.dataset_json.get("regions_class_order") is not None:
        raise NnkdError(f"{task.name} uses region-based labels (regions_class_order)",
                        "LoRKD trains tasks with label maps; use a dataset without regions")
    configurations = task.plans["configurations"]
    if configuration not in configurations:
        raise NnkdError(f"{task.name}'s {task.plans['plans_name']} plans have no configuration {configuration}",
                        f"they have {', '.join(configurations)}")
    if configurations[configuration].get("previous_stage") is not None:
        raise NnkdError(f"configuration {configuration} is a cascade stage", "LoRKD trains single-stage configurations")
    if task is first:
        return
    channels, expected = (num_input_channels(p.plans, configuration, p.dataset_json) for p in (task, first))
    if channels != expected:
        raise NnkdError(f"{task.name} has {channels} input channel(s), {first.name} has {expected}",
                        "LoRKD tasks share the student's input: use datasets with the same channels")
    difference = _plans_difference(first.plans, task.plans, configuration)
    if difference:
        budget = (first.plans.get("nnkd") or {}).get("budget", {}).get("name", "…")
        source = first.name[len("Dataset"):len("Dataset") + 3]
        raise NnkdError(f"the {first.plans['plans_name']} plans of {task.name} differ from {first.name}'s "
                        f"({difference}): the tasks were not planned together",
                        f"give it {first.name}'s plans: nnkd_plan_and_preprocess -d {task.name} "
                        f"--plans-from {source} --budget {budget}")


def _plans_difference(reference: dict, plans: dict, configuration: str) -> str | None:
    """The first setting (preprocessing or architecture of the configuration) in which the plans differ."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    for key in ("transpose_forward", "foreground_intensity_properties_per_channel"):
        if json.dumps(reference.get(key)) != json.dumps(plans.get(key)):
            return key
    a, b = (PlansManager(p).get_configuration(configuration).configuration for p in (reference, plans))
    for key in sorted(set(a) | set(b)):
        if json.dumps(a.get(key), sort_keys=True) != json.dumps(b.get(key), sort_keys=True):
            return f"{configuration}.{key}"
    return None
