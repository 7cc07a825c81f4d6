"""`cwd`: channel-wise distillation of the logits (nnkd.distill.channel_wise)."""

import torch

from nnkd.distill.channel_wise import cwd_loss
from nnkd.trainers.nnkd_trainer import KDStep, nnKDTrainer
from nnkd.trainers.settings import Rule


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
