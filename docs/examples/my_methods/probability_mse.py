import torch

from nnkd.trainers.nnkd_trainer import KDStep, nnKDTrainer
from nnkd.trainers.settings import Rule


class nnKDTrainer_ProbMSE(nnKDTrainer):
    """Distil by the mean squared error between teacher and student class probabilities."""

    method = "probmse"
    needs_teacher_logits = True  # the teacher must have logits and the same labels
    kd_weight = 5.0
    hyperparameters = ("kd_weight",)  # settable with --hp kd_weight=…
    hyperparameter_rules = {"kd_weight": Rule(minimum=0)}  # checked before the run writes anything

    def distillation_terms(self, step: KDStep) -> dict[str, torch.Tensor]:
        student = torch.softmax(step.student_logits.float(), dim=1)
        teacher = torch.softmax(step.teacher.logits.float(), dim=1)
        return {"prob_mse": self.kd_weight * torch.mean((student - teacher) ** 2)}
