"""`logit`: logit KD (nnkd.distill.logits), and the logit settings `tskd` shares."""

import torch

from nnkd.distill.logits import KD_LOSSES, kd_loss
from nnkd.distill.reprogramming import linear_decay
from nnkd.trainers.nnkd_trainer import KDStep, nnKDTrainer
from nnkd.trainers.settings import Rule


KD_SCHEDULES = ("constant", "linear")


class LogitKD:
    """Logit distillation settings and term shared by `logit` and `tskd` (nnkd.distill.logits.kd_loss)."""

    # Class-balanced KL at T = 1: the voxel-mean KL at T = 3 (Hinton's, nnkd's default before 2026-11-29) gave
    # a 0.3 %-of-voxels class a third of the organ's push and kept students from finding it
    # (docs/studies/small_classes.md)
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
