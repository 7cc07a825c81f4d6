"""The distillation methods: one thin nnKDTrainer subclass each, mechanics in nnkd.distill."""

import numpy as np
import torch
from torch import nn

from nnkd.errors import NnkdError
from nnkd.distill.feature import FeatureProjectors, feature_distance, pair_stages_by_resolution, resize_to
from nnkd.distill.logits import kd_kl_loss
from nnkd.trainers.nnkd_trainer import KDStep, nnKDTrainer


class nnKDTrainer_NoKD(nnKDTrainer):
    """The student alone on the same schedule: the baseline every report compares to."""

    method = "none"
    needs_teacher = False


class nnKDTrainer_Logit(nnKDTrainer):
    """Hinton KD: KL between temperature-softened teacher and student full-resolution logits, × T²."""

    method = "logit"
    needs_teacher_logits = True
    kd_temperature = 3.0
    kd_weight = 1.0
    hyperparameters = ("kd_temperature", "kd_weight")

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        loss = kd_kl_loss(step.student_logits, step.teacher.logits, self.kd_temperature,
                          regions=self.label_manager.has_regions)
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

    def _student_stage_layout(self) -> tuple[list[int], list[tuple[int, ...]]]:
        kwargs = self.configuration_manager.network_arch_init_kwargs
        strides = np.cumprod(np.array(kwargs["strides"]), axis=0)
        return list(kwargs["features_per_stage"]), [tuple(int(s) for s in row) for row in strides]

    def build_kd_helpers(self) -> nn.Module:
        if self.feature_loss not in ("mse", "cosine"):
            raise NnkdError(f"feature_loss '{self.feature_loss}' is unknown", "use mse or cosine")
        channels, strides = self._student_stage_layout()
        stages = list(self.feature_stages) if self.feature_stages is not None else list(range(1, len(channels)))
        self.distilled_stages = stages
        pairing = pair_stages_by_resolution(strides, self.teacher.feature_strides)
        self.teacher_stages = [pairing[s] for s in stages]
        self.print_to_log_file(f"feature KD: student stages {stages} ← teacher stages {self.teacher_stages}")
        return FeatureProjectors([channels[s] for s in stages],
                                 [self.teacher.feature_channels[t] for t in self.teacher_stages],
                                 len(self.configuration_manager.patch_size))

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        projected = self.kd_helpers([step.student_features[s] for s in self.distilled_stages])
        losses = [feature_distance(resize_to(p, step.teacher.features[t].shape[2:]), step.teacher.features[t],
                                   self.feature_loss) for p, t in zip(projected, self.teacher_stages)]
        return {"feature": self.feature_weight * torch.stack(losses).mean()}


METHODS = {cls.method: cls for cls in (nnKDTrainer_NoKD, nnKDTrainer_Logit, nnKDTrainer_Feature)}
