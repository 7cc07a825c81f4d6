"""The distillation methods: one thin nnKDTrainer subclass each, mechanics in nnkd.distill."""

from pathlib import Path

import torch
import torch.distributed as dist
from torch import autocast, nn

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context

from nnkd.cache.loading import CachedTeacherDataset
from nnkd.distill.channel_wise import cwd_loss
from nnkd.distill.cka import cka_per_stage
from nnkd.distill.feature import FeatureProjectors, feature_distance, pair_stages_by_resolution, resize_to
from nnkd.distill.logits import KD_LOSSES, kd_kl_loss, kd_loss
from nnkd.distill.multi_teacher import (BALANCE_MODES, STANDARDIZATIONS, FeatureStandardizer, LossBalancer,
                                        TeacherAdaptor, adaptor_loss)
from nnkd.distill.reprogramming import Reprogramming, hybrid_outputs, linear_decay
from nnkd.errors import NnkdError
from nnkd.method_table import METHOD_TRAINERS
from nnkd.nnunet_compat import finish_loader
from nnkd.teachers.base import TeacherOutput
from nnkd.teachers.registry import TeacherSpec
from nnkd.trainers.nnkd_trainer import KDStep, nnKDTrainer
from nnkd.trainers.settings import Rule
from nnkd.trainers.transfer_batches import MixedBatches, TransferDataset


class nnKDTrainer_NoKD(nnKDTrainer):
    """The student alone on the same schedule: the baseline every report compares to."""

    method = "none"
    needs_teacher = False


KD_SCHEDULES = ("constant", "linear")


class LogitKD:
    """Logit distillation settings and term shared by `logit` and `tskd` (nnkd.distill.logits.kd_loss)."""

    # Class-balanced KL at T = 1: the voxel-mean KL at T = 3 (Hinton's, nnkd's default before 2026-11-29) gave
    # a 0.3 %-of-voxels class a third of the organ's push and kept students from finding it (docs/benchmarks.md)
    kd_temperature = 1.0
    kd_weight = 1.0
    kd_loss = "kl_balanced"  # one of nnkd.distill.logits.KD_LOSSES
    # "constant": kd_weight throughout; "linear": kd_weight at the first epoch down to 0 at the last (as DRD's α, β),
    # so the student ends on the labels alone and is not held at its teacher's level where it can do better
    kd_schedule = "constant"
    logit_hyperparameters = ("kd_temperature", "kd_weight", "kd_loss", "kd_schedule")
    hyperparameter_rules = {"kd_temperature": Rule(positive=True), "kd_weight": Rule(minimum=0),
                            "kd_loss": Rule(choices=KD_LOSSES), "kd_schedule": Rule(choices=KD_SCHEDULES)}

    def logit_weight(self) -> float:
        """The logit KD weight of the current epoch."""
        decay = linear_decay(self.current_epoch, self.num_epochs) if self.kd_schedule == "linear" else 1.0
        return self.kd_weight * decay

    def logit_term(self, step: KDStep) -> torch.Tensor:
        return self.logit_weight() * kd_loss(step.student_logits, step.teacher.logits, self.kd_temperature,
                                             self.kd_loss, regions=self.label_manager.has_regions,
                                             mask=step.teacher.valid)


class nnKDTrainer_Logit(LogitKD, nnKDTrainer):
    """Logit KD: the student's full-resolution logits against the teacher's, temperature-softened, by the
    `kd_loss` kind (Hinton's voxel-mean KL × T², class-balanced KL, soft Dice, or KL + Dice)."""

    method = "logit"
    needs_teacher_logits = True
    needs_teacher_features = False
    hyperparameters = LogitKD.logit_hyperparameters

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        return {"logit": self.logit_term(step)}


class nnKDTrainer_CWD(nnKDTrainer):
    """Channel-wise distillation (Shu et al., ICCV 2021; DPRD's baseline): per class channel, the spatial
    softmax of the student's full-resolution logits against the teacher's at temperature τ, KL × τ²
    (nnkd.distill.channel_wise). Reads teacher logits only, so a teacher cache serves it."""

    method = "cwd"
    needs_teacher_logits = True
    needs_teacher_features = False
    cwd_temperature = 4.0  # the paper's τ for semantic segmentation
    cwd_weight = 3.0  # the paper's loss weight for segmentation logits
    hyperparameters = ("cwd_temperature", "cwd_weight")
    hyperparameter_rules = {"cwd_temperature": Rule(positive=True), "cwd_weight": Rule(minimum=0)}

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        return {"cwd": self.cwd_weight * cwd_loss(step.student_logits, step.teacher.logits, self.cwd_temperature,
                                                  mask=step.teacher.valid)}


class nnKDTrainer_Feature(nnKDTrainer):
    """FitNets: a 1×1-conv projector per student encoder stage onto the teacher stage of the closest
    resolution, resized to the teacher's grid when they differ, compared by MSE or cosine distance."""

    method = "feature"
    needs_student_features = True
    feature_loss = "mse"  # or "cosine"
    feature_weight = 1.0
    feature_stages: tuple[int, ...] | None = None  # student stages to distil; None = all but the first
    hyperparameters = ("feature_loss", "feature_weight", "feature_stages")
    hyperparameter_rules = {"feature_loss": Rule(choices=("mse", "cosine")), "feature_weight": Rule(minimum=0),
                            "feature_stages": Rule(stages=True)}

    def build_kd_helpers(self) -> nn.Module:
        channels, _ = self.student_stage_layout()
        stages = self.pair_stages(self.feature_stages)
        return FeatureProjectors([channels[s] for s in stages],
                                 [self.teacher.feature_channels[t] for t in self.paired_teacher_stages],
                                 len(self.configuration_manager.patch_size))

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        projected = self.kd_helpers([step.student_features[s] for s in self.distilled_stages])
        losses = [feature_distance(resize_to(p, step.teacher.features[t].shape[2:]), step.teacher.features[t],
                                   self.feature_loss) for p, t in zip(projected, self.paired_teacher_stages)]
        return {"feature": self.feature_weight * torch.stack(losses).mean()}


class nnKDTrainer_CKA(nnKDTrainer):
    """DRD's CKA distillation: Σ_stage w_i (1 − linear CKA) between student and teacher stage features at
    the same voxel positions. No projector: widths may differ, and the teacher needs no logits."""

    method = "cka"
    needs_student_features = True
    cka_stages: tuple[int, ...] | None = None  # student stages; None = all but the first
    cka_weights: tuple[float, ...] | None = None  # one per distilled stage; None = 1 each
    cka_max_rows = 4096  # voxel positions (rows) per stage and step, after pooling to the coarser grid
    hyperparameters = ("cka_stages", "cka_weights", "cka_max_rows")
    hyperparameter_rules = {"cka_stages": Rule(stages=True), "cka_weights": Rule(minimum=0, per_stage_of="cka_stages"),
                            "cka_max_rows": Rule(minimum=2)}

    def build_kd_helpers(self) -> None:
        stages = self.pair_stages(self.cka_stages)
        weights = [1.0] * len(stages) if self.cka_weights is None else [float(w) for w in self.cka_weights]
        self.stage_weights = torch.tensor(weights, device=self.device)

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        pairs = [(step.student_features[s], step.teacher.features[t])
                 for s, t in zip(self.distilled_stages, self.paired_teacher_stages)]
        cka = cka_per_stage(pairs, self.cka_max_rows)
        return {"cka": (self.stage_weights * (1 - cka)).sum()}


class nnKDTrainer_DRD(nnKDTrainer_CKA):
    """Deep Reprogramming Distillation: projectors φ_i reprogram teacher stage i into the student's stage-i
    shape, the student's own later stages and head turn it into hybrid logits, and
    L = L_seg(student) + α·L_seg(hybrid) + β·KL(hybrid ‖ student) + Σ w_i (1 − CKA_i),
    with α and β decaying linearly from their start values to 0 over training."""

    method = "drd"
    drd_stages: tuple[int, ...] | None = None  # student stages to reprogram; None = the CKA stages
    drd_alpha = 1.0  # α at the first epoch
    drd_beta = 1.0  # β at the first epoch
    hyperparameters = nnKDTrainer_CKA.hyperparameters + ("drd_stages", "drd_alpha", "drd_beta")
    hyperparameter_rules = {"drd_stages": Rule(stages=True), "drd_alpha": Rule(minimum=0), "drd_beta": Rule(minimum=0)}

    def build_kd_helpers(self) -> nn.Module:
        super().build_kd_helpers()
        channels, _ = self.student_stage_layout()
        self.reprogrammed_stages = list(self.drd_stages) if self.drd_stages is not None else self.distilled_stages
        self.reprogram_sources = self.teacher_stages_for(self.reprogrammed_stages)
        return Reprogramming([self.teacher.feature_channels[t] for t in self.reprogram_sources],
                             [channels[s] for s in self.reprogrammed_stages],
                             len(self.configuration_manager.patch_size))

    def loss_weights(self) -> tuple[float, float]:
        """(α, β) of the current epoch."""
        decay = linear_decay(self.current_epoch, self.num_epochs)
        return self.drd_alpha * decay, self.drd_beta * decay

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        terms = super().distillation_terms(step)
        alpha, beta = self.loss_weights()
        if alpha == 0 and beta == 0:
            return terms
        network = self.student_network()
        sizes = [step.student_features[s].shape[2:] for s in self.reprogrammed_stages]
        reprogrammed = self.kd_helpers([step.teacher.features[t] for t in self.reprogram_sources], sizes)
        seg, kl = [], []
        for stage, features in zip(self.reprogrammed_stages, reprogrammed):
            outputs = hybrid_outputs(network, step.student_features, stage, features)
            seg.append(self.loss(outputs, step.target))
            hybrid_logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
            kl.append(kd_kl_loss(step.student_logits, hybrid_logits.detach(), 1.0,
                                 regions=self.label_manager.has_regions))
        terms["hybrid_seg"] = alpha * torch.stack(seg).mean()
        terms["hybrid_kl"] = beta * torch.stack(kl).mean()
        return terms


class nnKDTrainer_MultiTeacher(nnKDTrainer):
    """Several teachers at once (any mix of families, 2D and 3D). Per teacher k: a stage of its features
    (default its last, the embedding), standardised with statistics of the first batches; an adaptor MLP on
    the student stage of closest resolution, resized to that teacher's grid; L_k = cosine distance +
    smooth-L1, plus logit KD when the teacher has logits for the dataset's labels. The L_k are combined by
    fixed, uncertainty or learned weights (nnkd.distill.multi_teacher.LossBalancer)."""

    method = "multiteacher"
    needs_student_features = True
    takes_several_teachers = True
    balance = "fixed"  # fixed | uncertainty | learned
    teacher_weights: tuple[float, ...] | None = None  # balance=fixed: one weight per teacher; None = 1 each
    balance_temperature = 1.0  # balance=learned: τ of the entropy term
    standardization = "phi-s"  # phi-s | channel | none
    standardization_batches = 4  # batches whose teacher features give the statistics
    teacher_stages: tuple[int, ...] | None = None  # one feature stage per teacher (negative from the end); None = last
    cosine_weight = 1.0
    smooth_l1_weight = 1.0
    kd_temperature = 3.0  # logit KD, for teachers with logits of the dataset's labels
    logit_weight = 1.0
    hyperparameters = ("balance", "teacher_weights", "balance_temperature", "standardization",
                       "standardization_batches", "teacher_stages", "cosine_weight", "smooth_l1_weight",
                       "kd_temperature", "logit_weight")
    hyperparameter_rules = {
        "balance": Rule(choices=BALANCE_MODES), "standardization": Rule(choices=STANDARDIZATIONS),
        "teacher_weights": Rule(minimum=0, per_teacher=True), "teacher_stages": Rule(per_teacher=True),
        "balance_temperature": Rule(positive=True), "standardization_batches": Rule(minimum=1),
        "cosine_weight": Rule(minimum=0), "smooth_l1_weight": Rule(minimum=0), "kd_temperature": Rule(positive=True),
        "logit_weight": Rule(minimum=0)}

    def setup_teachers(self) -> None:
        entries = (self.run_config.teachers if self.run_config else None) or []
        if not entries:
            raise NnkdError(f"{type(self).__name__} needs teachers but {self.output_folder}/teacher.json lists none",
                            "start the run with nnkd_train --method multiteacher --teacher SPEC_A --teacher SPEC_B")
        self.teachers = []
        for entry in entries:
            teacher = self.build_teacher(entry)
            self.check_teacher(teacher)
            self.teachers.append(teacher)
        self.teacher_names = [f"t{i}_{TeacherSpec.parse(t.spec).family}" for i, t in enumerate(self.teachers)]
        self.logit_teachers = [t.has_logits and dict(t.labels) == dict(self.dataset_json["labels"])
                               for t in self.teachers]
        for name, teacher, logits in zip(self.teacher_names, self.teachers, self.logit_teachers):
            if teacher.has_logits and not logits:
                self.print_to_log_file(f"multiteacher: {name} has logits for other labels; only its features are used")

    def build_kd_helpers(self) -> nn.Module:
        count = len(self.teachers)
        stages = [-1] * count if self.teacher_stages is None else [int(s) for s in self.teacher_stages]
        channels, strides = self.student_stage_layout()
        self.chosen_teacher_stages, self.student_stages = [], []
        standardizers, adaptors = [], []
        for name, teacher, stage in zip(self.teacher_names, self.teachers, stages):
            if not -len(teacher.feature_channels) <= stage < len(teacher.feature_channels):
                raise NnkdError(f"teacher_stages: {name} has {len(teacher.feature_channels)} stage(s), not {stage}",
                                "nnkd_teachers describe SPEC lists a teacher's stages")
            stage %= len(teacher.feature_channels)
            student_stage = pair_stages_by_resolution([teacher.feature_strides[stage]], strides)[0]
            standardizer = FeatureStandardizer(teacher.feature_channels[stage], self.standardization)
            standardizers.append(standardizer)
            adaptors.append(TeacherAdaptor(channels[student_stage], standardizer.out_channels,
                                           len(self.configuration_manager.patch_size)))
            self.chosen_teacher_stages.append(stage)
            self.student_stages.append(student_stage)
            self.print_to_log_file(f"multiteacher: {name} ({teacher.spec}) stage {stage} "
                                   f"({teacher.feature_channels[stage]} channels) ← student stage {student_stage} "
                                   f"through an adaptor to {standardizer.out_channels} standardised channels"
                                   f"{', plus logit KD' if self.teacher_has_logits(name) else ''}")
        helpers = nn.Module()
        helpers.standardizers = nn.ModuleList(standardizers)
        helpers.adaptors = nn.ModuleList(adaptors)
        helpers.balancer = LossBalancer(count, self.balance, self.teacher_weights, self.balance_temperature)
        return helpers

    def teacher_has_logits(self, name: str) -> bool:
        return self.logit_teachers[self.teacher_names.index(name)]

    def teach(self, data: torch.Tensor) -> list[TeacherOutput]:
        """Every teacher in turn under no_grad, so only one teacher's activations are alive at a time."""
        return [teacher.infer(data) for teacher in self.teachers]

    def on_train_start(self):
        super().on_train_start()
        standardizers = list(self.kd_helpers.standardizers)
        if all(s.is_fitted for s in standardizers):
            return  # statistics from the checkpoint (--c) or standardization "none"
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            for _ in range(self.standardization_batches):
                outputs = self.teach(next(self.dataloader_train)["data"].to(self.device, non_blocking=True))
                for standardizer, output, stage in zip(standardizers, outputs, self.chosen_teacher_stages):
                    standardizer.accumulate(output.features[stage])
        for name, standardizer in zip(self.teacher_names, standardizers):
            if self.is_ddp:
                for tensor in standardizer.accumulators():
                    dist.all_reduce(tensor)
            standardizer.fit()
            self.print_to_log_file(f"multiteacher: {name} feature statistics ({self.standardization}) from "
                                   f"{self.standardization_batches} batch(es), {int(standardizer.rows.item())} "
                                   "positions")

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        helpers = self.kd_helpers
        losses = []
        for k, (name, output) in enumerate(zip(self.teacher_names, step.teacher)):
            target = helpers.standardizers[k](output.features[self.chosen_teacher_stages[k]])
            predicted = resize_to(helpers.adaptors[k](step.student_features[self.student_stages[k]]),
                                  target.shape[2:])
            loss = adaptor_loss(predicted, target, self.cosine_weight, self.smooth_l1_weight)
            if self.logit_teachers[k]:
                loss = loss + self.logit_weight * kd_kl_loss(step.student_logits, output.logits, self.kd_temperature,
                                                              regions=self.label_manager.has_regions)
            losses.append(loss)
            step.log[f"kd_{name}"] = loss.detach()
        weights = helpers.balancer.weights().detach()
        for name, weight in zip(self.teacher_names, weights):
            step.log[f"weight_{name}"] = weight
        return {"teachers": helpers.balancer(torch.stack(losses))}


class nnKDTrainer_TSKD(LogitKD, nnKDTrainer_Feature):
    """TS-KD step 2: distil a task-tuned teacher (`tuned:FOLDER`, or any teacher with logits) on a transfer set.
    Each step joins nnU-Net's labelled batch (segmentation + KD) with `transfer_ratio` × as many transfer cases
    (unlabelled, synthetic, or the training cases `--labeled` left unlabelled: KD only, no segmentation term).
    KD = logit KL (T², as `logit`) + the FitNets feature term (as `feature`; `feature_weight=0` drops it)."""

    method = "tskd"
    needs_teacher_logits = True
    takes_transfer_set = True
    transfer_ratio = 1.0  # transfer samples per labelled sample in each step (rounded, at least 1 with a set)
    hyperparameters = nnKDTrainer_Feature.hyperparameters + LogitKD.logit_hyperparameters + ("transfer_ratio",)
    hyperparameter_rules = {"transfer_ratio": Rule(minimum=0)}

    without_teacher_features = ("add --hp feature_weight=0 (logit KD only, which the cache serves) or drop "
                                "--teacher-cache")

    @classmethod
    def uses_teacher_features(cls, settings: dict) -> bool:
        return bool(settings.get("feature_weight", cls.feature_weight))

    def initialize(self):
        if not self.was_initialized:  # without the feature term: no student hooks, no projectors
            self.needs_student_features = bool(self.feature_weight)
        super().initialize()

    def build_kd_helpers(self) -> nn.Module | None:
        return super().build_kd_helpers() if self.feature_weight else None

    def open_teacher_cache(self):
        """The cache must also hold the training cases `--labeled` left unlabelled: they are the transfer set."""
        cache = super().open_teacher_cache()
        cache.check(self.unlabeled_training_cases(), self.run_config.teacher["spec"])
        return cache

    def transfer_sources(self) -> list[Path | tuple[Path, list[str]]]:
        """The transfer-set folders (`--unlabeled`, `--synthetic`) and, with `--labeled N`, the fold's other
        training cases as unlabelled images (the low-label regime: few labels, many images)."""
        sources = [Path(f) for f in (self.run_config.transfer if self.run_config else None) or []]
        remainder = self.unlabeled_training_cases()
        return sources + ([(Path(self.preprocessed_dataset_folder), remainder)] if remainder else [])

    def get_tr_and_val_datasets(self):
        if getattr(self, "_loading_transfer", False):
            dataset = TransferDataset(self.transfer_sources())
            if self.teacher_cache is not None:  # only the fold's own cases: "0/<case>" is <case> in the cache
                dataset = CachedTeacherDataset(dataset, self.teacher_cache, lambda i: i.split("/", 1)[1])
            return dataset, dataset
        return super().get_tr_and_val_datasets()

    def get_dataloaders(self):
        """nnU-Net's loaders, plus a second training loader over the transfer set built by nnU-Net's own
        get_dataloaders (same patch size and augmentation) with the transfer batch size and no foreground
        oversampling (transfer cases have no labels)."""
        labeled, validation = super().get_dataloaders()
        sources = self.transfer_sources()
        if not sources or self.transfer_ratio <= 0:
            return labeled, validation
        count = max(1, round(self.batch_size * self.transfer_ratio))
        saved = self.batch_size, self.oversample_foreground_percent
        self.batch_size, self.oversample_foreground_percent, self._loading_transfer = count, 0.0, True
        try:
            transfer, transfer_validation = nnUNetTrainer.get_dataloaders(self)
        finally:
            (self.batch_size, self.oversample_foreground_percent), self._loading_transfer = saved, False
        finish_loader(transfer_validation)
        names = [str(s[0]) + f" (the {len(s[1])} training case(s) --labeled left unlabelled)"
                 if isinstance(s, tuple) else str(s) for s in sources]
        cases = len(TransferDataset(sources).identifiers)
        self.print_to_log_file(f"tskd: each step {self.batch_size} labelled + {count} transfer sample(s); transfer "
                               f"set: {cases} case(s) in {', '.join(names)}")
        return MixedBatches(labeled, transfer), validation

    def segmentation_loss(self, outputs, target, batch: dict) -> torch.Tensor:
        """nnU-Net's loss on the labelled samples only: transfer samples carry no segmentation."""
        count = batch.get("labeled_count")
        if count is None:
            return self.loss(outputs, target)
        def labeled(x):
            return [t[:count] for t in x] if isinstance(x, (list, tuple)) else x[:count]
        return self.loss(labeled(outputs), labeled(target))

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        terms = {"logit": self.logit_term(step)}
        if self.feature_weight:
            terms.update(super().distillation_terms(step))
        return terms

    def on_train_end(self):
        if isinstance(self.dataloader_train, MixedBatches):
            self.dataloader_train.finish_transfer()
            self.dataloader_train = self.dataloader_train.labeled  # nnU-Net shuts this one down
        super().on_train_end()


METHODS = {name: globals()[trainer] for name, trainer in METHOD_TRAINERS.items()}  # nnkd.method_table's names
