"""Hinton-style logit distillation on segmentation maps."""

import torch
import torch.nn.functional as F


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
               regions: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) of temperature-softened predictions, times T², averaged over voxels (those
    where `mask` is true, if given).

    Softmax over classes for label maps; for nnU-Net's region-based training (sigmoid outputs) each
    region is a Bernoulli distribution. Computed in float32 whatever the autocast dtype.
    """
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    if regions:
        log_p_s, log_q_s = F.logsigmoid(s), F.logsigmoid(-s)
        log_p_t, log_q_t = F.logsigmoid(t), F.logsigmoid(-t)
        kl = log_p_t.exp() * (log_p_t - log_p_s) + log_q_t.exp() * (log_q_t - log_q_s)
        per_voxel = kl.sum(1)
    else:
        log_s = F.log_softmax(s, dim=1)
        log_t = F.log_softmax(t, dim=1)
        per_voxel = (log_t.exp() * (log_t - log_s)).sum(1)
    if mask is not None:
        per_voxel = per_voxel[mask] if mask.any() else per_voxel.new_zeros(1)
    return per_voxel.mean() * temperature ** 2


def logits_from_probabilities(probabilities: torch.Tensor, regions: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """Logits whose softmax (sigmoid for regions) gives back `probabilities`: the log for classes (exact up
    to a per-voxel constant, which softmax ignores, at any temperature), the logit for regions. Probabilities
    below `eps` (float16 stores nothing below 6e-8) are read as `eps`."""
    p = probabilities.float().clamp(eps, 1 - eps if regions else 1)
    return torch.log(p) - torch.log1p(-p) if regions else torch.log(p)
