"""`feature`: FitNets feature distillation through projectors (nnkd.distill.feature)."""

import torch
from torch import nn

from nnkd.distill.feature import FeatureProjectors, feature_distance, resize_to
from nnkd.trainers.nnkd_trainer import KDStep, nnKDTrainer
from nnkd.trainers.settings import Rule


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
