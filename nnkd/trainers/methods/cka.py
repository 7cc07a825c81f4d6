"""`cka`: DRD's linear-CKA feature distillation (nnkd.distill.cka)."""

import torch

from nnkd.distill.cka import cka_per_stage
from nnkd.trainers.nnkd_trainer import KDStep, nnKDTrainer
from nnkd.trainers.settings import Rule


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
