"""nnKDTrainer: nnU-Net's training pipeline with a frozen teacher and distillation terms.

Everything that exists only for training (teacher, projectors) lives outside `self.network`, so the
student checkpoint's `network_weights` load strictly into the stock architecture. Trainable helpers
join the optimizer as a second parameter group (nnU-Net's poly LR drives both) and are saved under the
checkpoint's `nnkd` key.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import autocast, nn

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

from nnkd.atomic import remove_stale_temporaries, write_json_atomic
from nnkd.cache.loading import CachedTeacherDataset, SoftLabelAugmentation, split_soft_labels
from nnkd.cache.store import TeacherCache
from nnkd.devices import CPU_BF16_ENV, VALIDATION_MIRRORING_ENV, cpu_bf16, validation_mirroring
from nnkd.distill.feature import pair_stages_by_resolution
from nnkd.distill.logits import logits_from_probabilities
from nnkd.errors import NnkdError
from nnkd.nnunet_compat import finish_loader, stock_checkpoint, uncompiled
from nnkd.teachers.base import Teacher, TeacherOutput
from nnkd.checkpoints import load_checkpoint as read_checkpoint
from nnkd.teachers.fit import check_teacher_fits
from nnkd.teachers.registry import create_teacher
from nnkd.trainers.ddp import average_gradients, broadcast_state
from nnkd.trainers.labeled import LABELED_FILE, choose_labeled_cases
from nnkd.trainers.run_config import SCHEDULE_KEYS, RunConfig, TeacherEntry, seed_everything
from nnkd.trainers.settings import Rule, check_settings, coerce_hyperparameter

# Stop after this many epochs of the run's schedule and keep checkpoint_latest.pth, so that `--c` continues
# the same schedule (the learning rate follows the full --epochs throughout): how nnkd_distill's
# --max-dice-loss search trains its candidates rung by rung. No final checkpoint, no validation until the end.
STOP_AFTER_EPOCH_ENV = "nnkd_stop_after_epoch"


def stop_after_epoch() -> int | None:
    value = os.environ.get(STOP_AFTER_EPOCH_ENV)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise NnkdError(f"{STOP_AFTER_EPOCH_ENV}={value} is not a positive epoch count", f"unset {STOP_AFTER_EPOCH_ENV}")
    return int(value)

GRADIENT_CLIP = 12  # nnU-Net's value


# What a step's student output and teacher output may be: one tensor / TeacherOutput; a list (deep supervision's
# resolutions; several teachers in order); or, for a multi-dataset trainer (LoRKD), a dict by task index of
# what its network returns per task (nnkd.models.lorkd.TaskOutputs) and of each task's teacher output.
StudentOutputs = Union[torch.Tensor, list[torch.Tensor], dict[int, Any]]
TeacherOutputs = Union[TeacherOutput, list[TeacherOutput], dict[int, TeacherOutput], None]


@dataclass
class KDStep:
    """What one training step hands to a method's distillation terms."""
    data: torch.Tensor
    target: torch.Tensor | list[torch.Tensor]
    outputs: StudentOutputs  # student output: a list under deep supervision, a dict by task for LoRKD
    student_features: list[torch.Tensor] | None  # encoder stages, when the method asks for them
    teacher: TeacherOutputs  # what `teach` returned (a list with several teachers, a dict by task for LoRKD)
    log: dict[str, torch.Tensor] = field(default_factory=dict)  # reported each epoch, not added to the loss

    @property
    def student_logits(self) -> torch.Tensor:
        """Full-resolution student logits (outputs[0] under deep supervision); single-task outputs only."""
        if isinstance(self.outputs, dict):
            raise TypeError("a multi-task step has logits per task: read step.outputs[task]")
        return self.outputs[0] if isinstance(self.outputs, (list, tuple)) else self.outputs


class nnKDTrainer(nnUNetTrainer):
    """Base class of every nnkd method. Subclasses set the flags below and implement
    `distillation_terms` (and `build_kd_helpers` when they train modules of their own)."""

    method = "base"
    # needs_teacher, takes_several_teachers, takes_transfer_set: a method of nnkd.method_table gets them from its
    # row (nnkd.trainers.methods); a trainer outside the table sets them here
    needs_teacher = True
    needs_teacher_logits = False
    needs_teacher_features = True  # False: only teacher logits are read, so a teacher cache can serve them
    needs_student_features = False
    takes_several_teachers = False  # True: teacher.json lists every --teacher under "teachers"
    takes_transfer_set = False  # True: --unlabeled / --synthetic cases join the batches (KD only)
    hyperparameters: tuple[str, ...] = ()  # attribute names a run may set through teacher.json / --hp
    # allowed values of those attributes beyond their defaults' types (nnkd.trainers.settings.Rule), merged along
    # the class's bases and checked by check_settings before a run writes anything and again when it starts
    hyperparameter_rules: dict[str, Rule] = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1  # checkpoint_latest.pth after every epoch (nnU-Net: 50), a kill loses at most one epoch
        self.teacher: Teacher | None = None
        self.teacher_cache: TeacherCache | None = None
        self.image_channels = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                           dataset_json)
        self.kd_helpers: nn.Module | None = None
        self.kd_log: dict[str, list[float]] = {}
        self.run_config = RunConfig.load(self.output_folder)
        if self.run_config is not None:
            for key, value in self.run_config.schedule.items():
                if key in SCHEDULE_KEYS and value is not None:
                    setattr(self, key, int(value))
            for key, value in self.run_config.hyperparameters.items():
                setattr(self, key, coerce_hyperparameter(self, key, value))

    # ----------------------------------------------------------------- set-up
    def initialize(self):
        seed = self.run_config.seed if self.run_config else None
        if not self.was_initialized and seed is not None:
            seed_everything(seed + self.local_rank)
            self.print_to_log_file(f"nnkd: random seed {seed}")
        if not self.was_initialized and self.needs_teacher:
            if self.run_config and self.run_config.reads_cache:
                self.teacher_cache = self.open_teacher_cache()
            else:
                self.setup_teachers()
        if not self.was_initialized:
            teachers = len(self.run_config.teacher_entries) if self.run_config else 0
            channels, _ = self.student_stage_layout()
            self.check_settings(self.current_settings(), teachers, len(channels))
            helpers = self.build_kd_helpers()
            self.kd_helpers = helpers.to(self.device) if helpers is not None else None
        super().initialize()
        if self.is_ddp and self.kd_helpers is not None:
            broadcast_state(self.kd_helpers)  # every rank starts from rank 0's helpers
        self.print_to_log_file(f"nnkd method: {self.method}; hyper-parameters: {self.current_settings()}")
        if cpu_bf16(self.device):
            self.print_to_log_file(f"nnkd: training in bf16 autocast on this CPU, student and teacher "
                                   f"({CPU_BF16_ENV}=0 trains in float32)")

    def setup_teachers(self) -> None:
        """Build the live teacher(s) of the run and check they fit; `teach` runs them."""
        self.teacher = self.build_teacher(self.run_config.teacher if self.run_config else None)
        self.check_teacher(self.teacher)

    def build_teacher(self, teacher_entry: TeacherEntry | None) -> Teacher:
        """The teacher of one teacher.json entry, its checkpoint checked against the recorded sha256."""
        if teacher_entry is None or not teacher_entry.spec:
            raise NnkdError(f"{type(self).__name__} needs a teacher but {self.output_folder}/teacher.json names none",
                            "start the run with nnkd_train --teacher SPEC")
        teacher = create_teacher(teacher_entry.spec, fold=self.fold, device=self.device)
        recorded = teacher_entry.sha256
        if recorded and teacher.checkpoint_sha256 and recorded != teacher.checkpoint_sha256:
            raise NnkdError(f"the teacher checkpoint {teacher.checkpoint_path} changed since this run started "
                            f"(sha256 {teacher.checkpoint_sha256[:12]}… ≠ {recorded[:12]}…)",
                            "restore the original teacher or start a new run without --c")
        if not recorded and self.local_rank == 0:
            teacher_entry.checkpoint, teacher_entry.sha256 = teacher.checkpoint_path, teacher.checkpoint_sha256
            self.run_config.save(self.output_folder)
        self.print_to_log_file(f"Teacher: {teacher.spec} (checkpoint sha256 {teacher.checkpoint_sha256})")
        stages = ", ".join(f"{c}@{'×'.join(map(str, s))}" for c, s in zip(teacher.feature_channels,
                                                                          teacher.feature_strides))
        self.print_to_log_file(f"Teacher: {teacher.spatial_dims}D model, {teacher.in_channels} input channel(s), "
                               f"stages (channels@stride) {stages}, logits {'yes' if teacher.has_logits else 'no'}")
        return teacher

    def open_teacher_cache(self) -> TeacherCache:
        """The stored teacher probabilities of this fold's training cases, checked; the teacher is never built."""
        entry = self.run_config.teacher
        cache = TeacherCache(Path(entry.cache))
        training_cases, _ = self.do_split()
        cache.check(list(training_cases), entry.spec)
        self.print_to_log_file(f"Teacher: {entry.spec} from its cache {cache.folder} "
                               f"(settings {cache.manifest['settings']}); the teacher itself is not loaded")
        return cache

    def do_split(self):
        """nnU-Net's split; with `labeled` in teacher.json only that many of the fold's training cases are
        kept (a seeded choice, recorded in labeled_cases.json); the validation cases stay the same."""
        training_cases, validation_cases = super().do_split()
        labeled = self.run_config.labeled if self.run_config else None
        if labeled is None:
            return training_cases, validation_cases
        chosen = choose_labeled_cases(training_cases, labeled, self.fold)
        if self.local_rank == 0:
            write_json_atomic(Path(self.output_folder) / LABELED_FILE, {"labeled": labeled, "cases": chosen})
        return chosen, validation_cases

    def unlabeled_training_cases(self) -> list[str]:
        """The fold's training cases that `--labeled` left out (none without it): images a method with a
        transfer set may still distil on, never reading their labels."""
        labeled = self.run_config.labeled if self.run_config else None
        if labeled is None:
            return []
        training_cases, _ = super().do_split()
        chosen = set(choose_labeled_cases(training_cases, labeled, self.fold))
        return sorted(c for c in training_cases if c not in chosen)

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if self.teacher_cache is not None:
            dataset_tr = CachedTeacherDataset(dataset_tr, self.teacher_cache)
        return dataset_tr, dataset_val

    def get_training_transforms(self, *args, **kwargs):
        """nnU-Net's training transforms; with a teacher cache they also carry the soft labels."""
        transforms = super().get_training_transforms(*args, **kwargs)
        if self.teacher_cache is None:
            return transforms
        return SoftLabelAugmentation(transforms, self.image_channels)

    def check_teacher(self, teacher: Teacher) -> None:
        """Stop before the first step if the teacher cannot teach this student."""
        check_teacher_fits(teacher, self.plans_manager, self.configuration_name, self.dataset_json,
                           self.needs_teacher_logits, f"method {self.method}")

    without_teacher_features = "drop --teacher-cache, or use a logit-based method (logit)"  # the remedy

    @classmethod
    def uses_teacher_features(cls, settings: dict) -> bool:
        """Whether a run with these hyper-parameters reads the teacher's features (a cache holds none)."""
        return cls.needs_teacher_features

    @classmethod
    def default_settings(cls) -> dict:
        """Every hyper-parameter's class default, by name (what teacher.json records when --hp leaves it)."""
        return {name: getattr(cls, name) for name in cls.hyperparameters}

    @classmethod
    def coerce_settings(cls, given: dict) -> dict:
        """`--hp` values (text) converted to their defaults' types; an unknown name is an error."""
        return {name: coerce_hyperparameter(cls, name, value) for name, value in given.items()}

    @classmethod
    def check_settings(cls, settings: dict, teacher_count: int, stage_count: int | None = None) -> None:
        """Refuse hyper-parameter values (all of them, by name) that cannot work with this many teachers and
        student encoder stages (None: not known yet), by the rules the class declares."""
        check_settings(cls, settings, teacher_count, stage_count)

    def current_settings(self) -> dict:
        return {name: getattr(self, name) for name in self.hyperparameters}

    def build_kd_helpers(self) -> nn.Module | None:
        """Trainable modules of the method (projectors, adaptors); None if it has none."""
        return None

    def student_stage_layout(self) -> tuple[list[int], list[tuple[int, ...]]]:
        """Channels and cumulative strides of the student's encoder stages, from the plans."""
        kwargs = self.configuration_manager.network_arch_init_kwargs
        strides = np.cumprod(np.array(kwargs["strides"]), axis=0)
        return list(kwargs["features_per_stage"]), [tuple(int(s) for s in row) for row in strides]

    def teacher_stages_for(self, student_stages) -> list[int]:
        """The teacher stage of closest resolution for each student stage."""
        _, strides = self.student_stage_layout()
        pairing = pair_stages_by_resolution(strides, self.teacher.feature_strides)
        return [pairing[s] for s in student_stages]

    def pair_stages(self, stages) -> list[int]:
        """Set `distilled_stages` (default: all but the full-resolution first) and `paired_teacher_stages`, the
        teacher stage of closest resolution for each; return the student stages."""
        channels, _ = self.student_stage_layout()
        self.distilled_stages = list(stages) if stages is not None else list(range(1, len(channels)))
        self.paired_teacher_stages = self.teacher_stages_for(self.distilled_stages)
        self.print_to_log_file(f"{self.method}: student stages {self.distilled_stages} ← teacher stages "
                               f"{self.paired_teacher_stages}")
        return self.distilled_stages

    def configure_optimizers(self):
        optimizer, lr_scheduler = super().configure_optimizers()
        if self.kd_helpers is not None and any(True for _ in self.kd_helpers.parameters()):
            optimizer.add_param_group({"params": list(self.kd_helpers.parameters())})
        return optimizer, lr_scheduler

    # ------------------------------------------------------------------ step
    def student_network(self) -> nn.Module:
        """The plain student (no DDP or torch.compile wrapper), to call encoder and decoder separately."""
        module = self.network.module if self.is_ddp else self.network
        return uncompiled(module)

    def student_forward(self, data: torch.Tensor):
        """(encoder stage features or None, outputs). Without features this is nnU-Net's own call."""
        if not self.needs_student_features:
            return None, self.network(data)
        network = self.student_network()
        skips = network.encoder(data)
        return skips, network.decoder(skips)

    def segmentation_loss(self, outputs, target, batch: dict) -> torch.Tensor:
        """nnU-Net's loss on the batch (methods with unlabelled samples restrict it to the labelled ones)."""
        return self.loss(outputs, target)

    def teach(self, data: torch.Tensor) -> TeacherOutput | list[TeacherOutput] | None:
        """The live teacher's output for the batch, without gradients (None when it comes from a cache)."""
        if self.teacher is None:
            return None
        return self.teacher.infer(data)

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        """Weighted loss terms added to nnU-Net's segmentation loss, by name (shown in the log)."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = list(self.network.parameters())
        return params + (list(self.kd_helpers.parameters()) if self.kd_helpers is not None else [])

    def _sync_gradients(self) -> None:
        """DDP only reduces gradients of calls through its own forward; reduce the rest by hand."""
        if not self.is_ddp:
            return
        params = list(self.kd_helpers.parameters()) if self.kd_helpers is not None else []
        if self.needs_student_features:
            params += list(self.network.parameters())
        average_gradients(params)

    def step_autocast(self):
        """The precision of a training step: nnU-Net's float16 autocast on CUDA, bf16 autocast on a CPU that
        computes bf16 natively (`nnkd.devices.cpu_bf16`), else float32."""
        if self.device.type == "cuda":
            return autocast(self.device.type, enabled=True)
        return autocast("cpu", dtype=torch.bfloat16) if cpu_bf16(self.device) else dummy_context()

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        cached = None
        if self.teacher_cache is not None:
            data, probabilities, valid = split_soft_labels(data, self.image_channels, self.label_manager.has_regions)
            cached = TeacherOutput([], logits_from_probabilities(probabilities, self.label_manager.has_regions),
                                   valid)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        if self.kd_helpers is not None:
            self.kd_helpers.train()

        self.optimizer.zero_grad(set_to_none=True)
        with self.step_autocast():
            features, outputs = self.student_forward(data)
            seg_loss = self.segmentation_loss(outputs, target, batch)
            step = KDStep(data, target, outputs, features, cached if cached is not None else self.teach(data))
            terms = self.distillation_terms(step)
            total = seg_loss + sum(terms.values()) if terms else seg_loss

        params = self.trainable_parameters()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(total).backward()
            self._sync_gradients()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, GRADIENT_CLIP)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            total.backward()
            self._sync_gradients()
            torch.nn.utils.clip_grad_norm_(params, GRADIENT_CLIP)
            self.optimizer.step()
        result = {"loss": total.detach().cpu().numpy(), "seg_loss": seg_loss.detach().cpu().numpy()}
        result.update({f"kd_{name}": value.detach().cpu().numpy() for name, value in terms.items()})
        result.update({name: value.detach().float().cpu().numpy() for name, value in step.log.items()})
        return result

    # ------------------------------------------------- stopping part-way (search)
    def on_train_start(self):
        super().on_train_start()
        self.scheduled_epochs = self.num_epochs
        stop = stop_after_epoch()
        if stop is not None and stop < self.num_epochs:
            self.num_epochs = stop  # the loop ends here; the scheduler was built with the full schedule
            self.print_to_log_file(f"nnkd: stopping after epoch {stop} of {self.scheduled_epochs} "
                                   f"({STOP_AFTER_EPOCH_ENV}); --c continues the same schedule")

    @property
    def stopping_early(self) -> bool:
        return getattr(self, "scheduled_epochs", self.num_epochs) > self.num_epochs

    def on_train_end(self):
        if not self.stopping_early:
            return super().on_train_end()
        # nnU-Net skips checkpoint_latest at what it takes for the last epoch: write it (as its final save does,
        # with the epoch counter one back), keep no final checkpoint, stop the loaders
        self.current_epoch -= 1
        self.save_checkpoint(str(Path(self.output_folder) / "checkpoint_latest.pth"))
        self.current_epoch += 1
        finish_loader(self.dataloader_train)
        finish_loader(self.dataloader_val)
        self.print_to_log_file(f"nnkd: stopped after epoch {self.current_epoch} of {self.scheduled_epochs}")

    def perform_actual_validation(self, *args, **kwargs):
        if self.stopping_early:
            self.print_to_log_file("nnkd: no final validation before the schedule's end")
            return None
        if validation_mirroring():
            return super().perform_actual_validation(*args, **kwargs)
        # nnU-Net's validation predictor mirrors along the trainer's axes; without them it runs each window once.
        # The checkpoints (written before) keep the axes, so predictions from the model folder still mirror.
        self.print_to_log_file(f"nnkd: final validation without mirroring ({VALIDATION_MIRRORING_ENV}=0)")
        axes, self.inference_allowed_mirroring_axes = self.inference_allowed_mirroring_axes, None
        try:
            return super().perform_actual_validation(*args, **kwargs)
        finally:
            self.inference_allowed_mirroring_axes = axes

    # ------------------------------------------------------- logging, plots
    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        names = [k for k in train_outputs[0] if k == "seg_loss" or k.startswith(("kd_", "weight_"))]
        means = torch.tensor([float(np.mean([o[k] for o in train_outputs])) for k in names], dtype=torch.float64)
        if self.is_ddp:
            means = means.to(self.device)
            dist.all_reduce(means)
            means = means.cpu() / dist.get_world_size()
        for name, value in zip(names, means.tolist()):
            values = self.kd_log.setdefault(name, [])
            del values[self.current_epoch:]  # a resumed epoch replaces its old entry
            values.append(value)
        self.print_to_log_file("distillation: " + ", ".join(f"{n} {v:.4f}" for n, v in zip(names, means.tolist())))

    def on_epoch_end(self):
        if self.local_rank == 0 and self.kd_log:
            plot_kd_terms(self.kd_log, Path(self.output_folder) / "progress_kd.png", self.method)
        super().on_epoch_end()

    # ----------------------------------------------------------- checkpoints
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the `nnkd` entry, written to a temp file and renamed."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = stock_checkpoint(self, self.student_network().state_dict())
        checkpoint["nnkd"] = {
            "method": self.method,
            "helpers": self.kd_helpers.state_dict() if self.kd_helpers is not None else None,
            "kd_log": self.kd_log,
            "hyperparameters": self.current_settings(),
        }
        tmp = f"{filename}.tmp-{os.getpid()}"
        torch.save(checkpoint, tmp)
        os.replace(tmp, filename)
        remove_stale_temporaries(Path(filename))

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's loading, after reading the file with weights_only=True: a truncated file is one clear error,
        and pickled code in it is refused before nnU-Net's own torch.load(weights_only=False) could run it."""
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            read_checkpoint(filename_or_checkpoint, map_location=self.device)
        super().load_checkpoint(filename_or_checkpoint)
        state = checkpoint.get("nnkd") or {}
        if self.kd_helpers is not None:
            if state.get("helpers") is None:
                raise NnkdError(f"{filename_or_checkpoint} holds no {self.method} helper weights",
                                "it was not written by this method; start a new run without --c")
            self.kd_helpers.load_state_dict(state["helpers"])
        self.kd_log = {k: list(v) for k, v in (state.get("kd_log") or {}).items()}


def plot_kd_terms(kd_log: dict[str, list[float]], path: Path, method: str) -> None:
    """The segmentation loss and each distillation term per epoch, beside nnU-Net's progress.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = {n: v for n, v in kd_log.items() if n.startswith("weight_")}
    fig, axes = plt.subplots(2 if weights else 1, 1, figsize=(8, 7.5 if weights else 4.5), squeeze=False)
    panels = [({n: v for n, v in kd_log.items() if n not in weights}, "loss term", "training loss terms")]
    if weights:
        panels.append((weights, "weight", "teacher loss weights"))
    for ax, (series, ylabel, title) in zip(axes[:, 0], panels):
        for name, values in series.items():
            ax.plot(range(len(values)), values, marker="o" if len(values) < 30 else None, label=name)
        ax.set(xlabel="epoch", ylabel=ylabel, title=f"nnkd {method}: {title}")
        ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
