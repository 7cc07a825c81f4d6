"""The distillation methods: one thin nnKDTrainer subclass each, mechanics in nnkd.distill."""

import torch
from torch import nn

from nnkd.distill.cka import cka_per_stage
from nnkd.distill.feature import FeatureProjectors, feature_distance, resize_to
from nnkd.distill.logits import kd_kl_loss
from nnkd.distill.reprogramming import Reprogramming, hybrid_outputs, linear_decay
from nnkd.errors import NnkdError
from nnkd.trainers.nnkd_trainer import KDStep, nnKDTrainer


class nnKDTrainer_NoKD(nnKDTrainer):
    """The student alone on the same schedule: the baseline every report compares to."""

    method = "none"
    needs_teacher = False


class nnKDTrainer_Logit(nnKDTrainer):
    """Hinton KD: KL between temperature-softened teacher and student full-resolution logits, × T²."""

    method = "logit"
    needs_teacher_logits = True
    needs_teacher_features = False
    kd_temperature = 3.0
    kd_weight = 1.0
    hyperparameters = ("kd_temperature", "kd_weight")

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        loss = kd_kl_loss(step.student_logits, step.teacher.logits, self.kd_temperature,
                          regions=self.label_manager.has_regions, mask=step.teacher.valid)
        return {"logit": self.kd_weight * loss}


class nnKDTrainer_Feature(nnKDTrainer):
    """FitNets: a 1×1-conv projector per student encoder stage onto the teacher stage of the closest
    resolution, resized to the teacher's grid when they differ, compared by MSE or cosine distance."""

    method = "feature"
    needs_student_features = True
    feature_loss = "mse"  # or "cosine"
    feature_weight = 1.0
    feature_stages: tuple[int, ...] | None = None  # student stages to distil; None = all but the first
    hyperparameters = ("feature_loss", "feature_weight", "feature_stages")

    def build_kd_helpers(self) -> nn.Module:
        if self.feature_loss not in ("mse", "cosine"):
            raise NnkdError(f"feature_loss '{self.feature_loss}' is unknown", "use mse or cosine")
        channels, _ = self.student_stage_layout()
        stages = self.pair_stages(self.feature_stages)
        return FeatureProjectors([channels[s] for s in stages],
                                 [self.teacher.feature_channels[t] for t in self.teacher_stages],
                                 len(self.configuration_manager.patch_size))

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        projected = self.kd_helpers([step.student_features[s] for s in self.distilled_stages])
        losses = [feature_distance(resize_to(p, step.teacher.features[t].shape[2:]), step.teacher.features[t],
                                   self.feature_loss) for p, t in zip(projected, self.teacher_stages)]
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

    def build_kd_helpers(self) -> None:
        stages = self.pair_stages(self.cka_stages)
        weights = [1.0] * len(stages) if self.cka_weights is None else [float(w) for w in self.cka_weights]
        if len(weights) != len(stages):
            raise NnkdError(f"cka_weights has {len(weights)} value(s) for {len(stages)} distilled stage(s)",
                            "give one weight per stage in cka_stages")
        self.stage_weights = torch.tensor(weights, device=self.device)

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        pairs = [(step.student_features[s], step.teacher.features[t])
                 for s, t in zip(self.distilled_stages, self.teacher_stages)]
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


METHODS = {cls.method: cls for cls in (nnKDTrainer_NoKD, nnKDTrainer_Logit, nnKDTrainer_Feature, nnKDTrainer_CKA,
                                       nnKDTrainer_DRD)}
