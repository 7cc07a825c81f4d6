"""Hinton-style logit distillation on segmentation maps."""

import torch
import torch.nn.functional as F


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
               regions: bool = False, mask: torch.Tensor | None = None,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) of temperature-softened predictions, times T², averaged over voxels (those
    where `mask` is true, if given; weighted by `weights` (B, *spatial), if given).

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
    if weights is not None:
        per_voxel = per_voxel * weights
    if mask is not None:
        per_voxel = per_voxel[mask] if mask.any() else per_voxel.new_zeros(1)
    return per_voxel.mean() * temperature ** 2


def class_balanced_weights(teacher_logits: torch.Tensor, regions: bool = False,
                           mask: torch.Tensor | None = None,
                           student_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Per-voxel weights (B, *spatial) under which each class the teacher predicts in a sample carries the same
    total weight, normalised to a mean of 1 over the (valid) voxels: the KD analogue of nnU-Net's Dice term,
    which weighs a 40-voxel lesion like a 20,000-voxel background. Classes come from the teacher's argmax
    (for regions: the deepest region a voxel is in, 0 outside all).

    With `student_logits`, a voxel weighs the larger of its teacher class's and its student class's weight
    (a class the teacher does not predict in the sample: 1 / the student's voxels of it), so a false organ
    voxel costs what a missed one does, as a false positive costs in Dice; where both agree the weights are
    those without the student."""
    with torch.no_grad():
        teacher_classes, count = _classes(teacher_logits, regions)
        valid = torch.ones_like(teacher_classes, dtype=torch.bool) if mask is None else mask

        def per_class(classes):
            onehot = torch.nn.functional.one_hot(classes, count).movedim(-1, 1) & valid[:, None]
            return onehot, onehot.flatten(2).sum(2).float()  # (B, classes)

        onehot, teacher_count = per_class(teacher_classes)
        present = (teacher_count > 0).sum(1).clamp_min(1).float()  # (B,)

        def voxel_weights(onehot, counts):
            class_weight = torch.where(counts > 0, 1 / counts.clamp_min(1), counts.new_zeros(()))
            return (class_weight[(...,) + (None,) * (teacher_classes.ndim - 1)] * onehot).sum(1)

        weights = voxel_weights(onehot, teacher_count)
        if student_logits is not None:
            student_onehot, student_count = per_class(_classes(student_logits.detach(), regions)[0])
            counts = torch.where(teacher_count > 0, teacher_count, student_count)
            weights = torch.maximum(weights, voxel_weights(student_onehot, counts))
        voxels = valid.flatten(1).sum(1).clamp_min(1).float()
        return weights * (voxels / present)[(...,) + (None,) * (teacher_classes.ndim - 1)]


def _classes(logits: torch.Tensor, regions: bool) -> tuple[torch.Tensor, int]:
    """Each voxel's class (argmax; for nested regions the deepest region it is in, 0 outside all) and the
    number of classes."""
    if regions:
        depth = (logits > 0).long().cumprod(1).sum(1)  # regions nest: 0 outside, k inside the first k
        return depth, logits.shape[1] + 1
    return logits.argmax(1), logits.shape[1]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, kind: str = "kl",
            regions: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logit distillation of one of the KD_LOSSES kinds:

    - ``kl``: Hinton's voxel-mean KL × T² (`kd_kl_loss`): every voxel counts the same, so a class of a
      few hundred voxels gets almost no weight;
    - ``kl_balanced``: the same KL with `class_balanced_weights`, every class the teacher sees weighing alike;
    - ``dice``: nnU-Net's soft Dice (foreground classes, per sample) between the student's and the teacher's
      temperature-softened probabilities;
    - ``kl+dice``: the sum of the first and the third, the KD analogue of nnU-Net's CE + Dice;
    - ``kl+kl_balanced``: the sum of the first two: the small classes' push of ``kl_balanced`` and the plain
      KL's push on the large classes (the organ), which the balanced weights all but remove;
    - ``kl_balanced_fp``: ``kl_balanced`` where a voxel the student puts in another class than the teacher
      weighs the larger of the two classes' weights: a false organ voxel in the background costs what a missed
      organ voxel costs (as in Dice), where ``kl_balanced`` charges it the background's small weight.
    """
    if kind not in KD_LOSSES:
        raise ValueError(f"unknown KD loss {kind!r}; use one of {', '.join(KD_LOSSES)}")
    parts = kind.split("+")
    loss = student_logits.new_zeros((), dtype=torch.float32)
    if {"kl", "kl_balanced", "kl_balanced_fp"} & set(parts):  # one KL pass: kl + kl_balanced is the KL with 1 + w
        weights = None
        if "kl_balanced" in parts or "kl_balanced_fp" in parts:
            student = student_logits if "kl_balanced_fp" in parts else None
            weights = class_balanced_weights(teacher_logits, regions, mask, student)
        if weights is not None and "kl" in parts:
            weights = weights + 1
        loss = loss + kd_kl_loss(student_logits, teacher_logits, temperature, regions, mask, weights)
    if "dice" in parts:
        loss = loss + kd_dice_loss(student_logits, teacher_logits, temperature, regions, mask)
    return loss


def kd_dice_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                 regions: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
    """nnU-Net's MemoryEfficientSoftDiceLoss (per sample, foreground classes; every region for region-based
    training) with the teacher's softened probabilities as the soft target; 0 is no agreement, −1 full."""
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    p_s, p_t = (torch.sigmoid(s), torch.sigmoid(t)) if regions else (s.softmax(1), t.softmax(1))
    dice = MemoryEfficientSoftDiceLoss(apply_nonlin=None, batch_dice=False, do_bg=regions, smooth=1e-5, ddp=False)
    return dice(p_s, p_t.detach(), loss_mask=None if mask is None else mask[:, None].to(p_s.dtype))


KD_LOSSES = ("kl", "kl_balanced", "dice", "kl+dice", "kl+kl_balanced", "kl_balanced_fp")


def logits_from_probabilities(probabilities: torch.Tensor, regions: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """Logits whose softmax (sigmoid for regions) gives back `probabilities`: the log for classes (exact up
    to a per-voxel constant, which softmax ignores, at any temperature), the logit for regions. Probabilities
    below `eps` (float16 stores nothing below 6e-8) are read as `eps`."""
    p = probabilities.float().clamp(eps, 1 - eps if regions else 1)
    return torch.log(p) - torch.log1p(-p) if regions else torch.log(p)
