"""TS-KD step 1: tune a foundation teacher to the task with nnU-Net's own training loop.

`nnKDTeacherTuner` is an nnUNetTrainer whose network is the teacher with peft LoRA adapters on its attention
projections plus a light segmentation head (nnkd.teachers.tuned). Only LoRA and the head train; data loading,
augmentation, the Dice+CE loss, checkpoints, `--c` and the final validation are nnU-Net's. At the end it writes a
tuned-teacher folder that `tuned:FOLDER` loads as a teacher with logits.
"""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnkd.atomic import replace_folder, write_json_atomic
from nnkd.errors import NnkdError
from nnkd.nnunet_compat import uncompiled
from nnkd.teachers.registry import create_teacher
from nnkd.teachers.tuned import TUNED_FILE, TUNED_FOLDER, SegmentationHead, TunedSegmenter, add_lora
from nnkd.trainers.labeled import LABELED_FILE, choose_labeled_cases
from nnkd.trainers.run_config import seed_everything
from nnkd.records import JsonRecord

TUNING_FILE = "tuning.json"


@dataclass
class TuningConfig(JsonRecord):
    """What a tuning run was started with, kept in its fold folder (read again by `--c`)."""
    FILE = TUNING_FILE
    base_spec: str | None
    base_checkpoint: str | None = None
    base_sha256: str | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    head_hidden: int = 32
    learning_rate: float = 1e-3
    labeled: int | None = None
    schedule: dict = field(default_factory=dict)
    seed: int | None = None  # seeds Python's, NumPy's and torch's RNGs before the head and LoRA are built
    versions: dict = field(default_factory=dict)  # nnkd, nnU-Net and torch versions the tuning was started with


def check_tunable(teacher, channels: int, dims: int, dataset: str) -> None:
    """The teacher must take the dataset's channels and patch dimensionality."""
    if teacher.in_channels != channels or dims not in teacher.serves_dims:
        raise NnkdError(f"teacher {teacher.spec} takes {teacher.in_channels} channel(s) and "
                        f"{'/'.join(f'{d}D' for d in teacher.serves_dims)} patches; {dataset} has "
                        f"{channels} channel(s) and {dims}D patches", "pick a teacher and configuration that fit")


class nnKDTeacherTuner(nnUNetTrainer):
    """nnU-Net's loop around a LoRA-adapted foundation teacher and its segmentation head."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False  # one head, one output
        self.tuning = TuningConfig.load(self.output_folder)
        if self.tuning is None:
            raise NnkdError(f"{self.output_folder}/{TUNING_FILE} is missing",
                            "start the tuning with nnkd_tune_teacher")
        for key, value in self.tuning.schedule.items():
            setattr(self, key, int(value))
        self.initial_lr = self.tuning.learning_rate
        self.weight_decay = 1e-4

    def initialize(self):
        if not self.was_initialized and self.tuning.seed is not None:
            seed_everything(self.tuning.seed + self.local_rank)
            self.print_to_log_file(f"nnkd: random seed {self.tuning.seed}")
        super().initialize()

    def build_network_architecture(self, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = False):
        """The base teacher from its spec, LoRA through peft, and the head (an instance method: it needs the
        run's tuning record; nnU-Net calls it through the instance)."""
        teacher = create_teacher(self.tuning.base_spec, fold=self.fold, device="cpu")
        dims = len(configuration_manager.patch_size)
        check_tunable(teacher, num_input_channels, dims, "the dataset")
        if self.tuning.base_sha256 and teacher.checkpoint_sha256 != self.tuning.base_sha256:
            raise NnkdError(f"the base checkpoint {teacher.checkpoint_path} changed since this tuning started",
                            "restore it, or start a new tuning without --c")
        adapted = add_lora(teacher, self.tuning.lora_rank, self.tuning.lora_alpha)
        head = SegmentationHead(teacher.feature_channels[-1], num_output_channels, dims, self.tuning.head_hidden)
        trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
        self.print_to_log_file(f"Tuning {teacher.spec}: LoRA rank {self.tuning.lora_rank} (α {self.tuning.lora_alpha}) "
                               f"on {', '.join(teacher.lora_targets)}: {trainable} trainable of "
                               f"{sum(p.numel() for p in adapted.parameters())} parameters; head "
                               f"{sum(p.numel() for p in head.parameters())} parameters")
        return TunedSegmenter(adapted, head)

    def set_deep_supervision_enabled(self, enabled: bool):
        """The tuned head has one output; nothing to switch."""

    def configure_optimizers(self):
        """AdamW on LoRA and the head only (the usual optimizer for LoRA), with nnU-Net's poly schedule."""
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def do_split(self):
        training_cases, validation_cases = super().do_split()
        if self.tuning.labeled is None:
            return training_cases, validation_cases
        chosen = choose_labeled_cases(training_cases, self.tuning.labeled, self.fold)
        if self.local_rank == 0:
            write_json_atomic(Path(self.output_folder) / LABELED_FILE, {"labeled": self.tuning.labeled,
                                                                        "cases": chosen})
        return chosen, validation_cases

    def segmenter(self) -> TunedSegmenter:
        module = self.network.module if self.is_ddp else self.network
        return uncompiled(module)

    def on_train_end(self):
        super().on_train_end()
        if self.local_rank == 0:
            self.write_tuned_teacher()

    def write_tuned_teacher(self) -> Path:
        """adapter/, head.pth and tuned_teacher.json in fold_X/tuned_teacher, swapped in whole."""
        target = Path(self.output_folder) / TUNED_FOLDER
        staging = target.with_name(f"{TUNED_FOLDER}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        segmenter = self.segmenter()
        cm = self.configuration_manager
        record = {
            "base_spec": self.tuning.base_spec, "base_sha256": self.tuning.base_sha256,
            "lora": {"rank": self.tuning.lora_rank, "alpha": self.tuning.lora_alpha,
                     "targets": list(segmenter.teacher.base_model.model.lora_targets)},
            "head": {"hidden": self.tuning.head_hidden, "spatial_dims": len(cm.patch_size),
                     "outputs": self.label_manager.num_segmentation_heads},
            "labels": self.dataset_json["labels"], "dataset": self.plans_manager.dataset_name,
            "plans": self.plans_manager.plans_name, "configuration": self.configuration_name, "fold": self.fold,
            "labeled": self.tuning.labeled, "epochs": self.num_epochs,
            "plans_configuration": {"spacing": list(cm.spacing), "normalization_schemes": cm.normalization_schemes,
                                    "transpose_forward": list(self.plans_manager.transpose_forward),
                                    "intensity_properties":
                                        self.plans_manager.plans["foreground_intensity_properties_per_channel"]},
            "validation_dice": None,
        }
        segmenter.save(staging, record)
        replace_folder(staging, target)
        self.print_to_log_file(f"Tuned teacher written to {target} (load it as tuned:{self.output_folder})")
        return target


def record_validation_dice(fold_folder: Path, dice: float) -> None:
    """Add the final validation Dice (nnU-Net's summary.json) to the tuned teacher's record."""
    path = Path(fold_folder) / TUNED_FOLDER / TUNED_FILE
    record = json.loads(path.read_text())
    record["validation_dice"] = dice
    write_json_atomic(path, record)
