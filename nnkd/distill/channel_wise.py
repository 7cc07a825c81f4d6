"""Channel-wise distillation (CWD; Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction",
ICCV 2021): each channel of a map is turned into a distribution over its spatial positions by a softmax at
temperature τ, and the student's distribution is pulled towards the teacher's by KL, scaled by τ² and
averaged over channels and batch. On segmentation logits a channel is a class, so the student learns *where*
the teacher puts each class, with every class weighted alike however small it is."""

import torch
import torch.nn.functional as F

MASKED = -1e4  # the logit of a position outside the mask: exp underflows to 0 in float32


def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """student, teacher: (B, C, *spatial) maps of the same shape (logits or features); mask: (B, *spatial) or
    (B, 1, *spatial) or None, True where the teacher is valid (positions outside it get no probability).
    Returns τ² · mean over (B, C) of KL(softmax_spatial(teacher/τ) ‖ softmax_spatial(student/τ))."""
    if student.shape != teacher.shape:
        raise ValueError(f"CWD needs maps of one shape, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    s = student.float().flatten(2) / temperature
    t = teacher.float().flatten(2) / temperature
    if mask is not None:  # a large finite value rather than −inf keeps a fully masked row finite (KL 0)
        keep = mask.reshape(mask.shape[0], 1, -1).expand_as(s).bool()
        s = s.masked_fill(~keep, MASKED)
        t = t.masked_fill(~keep, MASKED)
    log_p_s = F.log_softmax(s, dim=-1)
    log_p_t = F.log_softmax(t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B, C)
    return kl.mean() * temperature ** 2
