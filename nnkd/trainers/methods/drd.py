"""`drd`: Deep Reprogramming Distillation (nnkd.distill.reprogramming) on top of `cka`."""

import torch
from torch import nn

from nnkd.distill.logits import kd_kl_loss
from nnkd.distill.reprogramming import Reprogramming, hybrid_outputs, linear_decay
from nnkd.trainers.methods.cka import nnKDTrainer_CKA
from nnkd.trainers.nnkd_trainer import KDStep
from nnkd.trainers.settings import Rule


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
