"""One check every teacher family passes: declared stages match what it returns, and a KD step runs."""

import torch

from nnkd.distill.cka import cka_per_stage
from nnkd.distill.feature import FeatureProjectors, feature_distance, resize_to
from nnkd.teachers.base import Teacher


def check_teacher_and_kd_step(teacher: Teacher, patch: torch.Tensor) -> list[torch.Size]:
    """Run `teacher` on `patch` (N, C, *spatial); assert its features have the declared channels, the
    patch's dimensionality and finite values; take one feature + CKA distillation step of a stand-in
    student stage through a projector; return the feature shapes."""
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        out = teacher(patch)
    assert len(out.features) == len(teacher.feature_channels) == len(teacher.feature_strides)
    for feature, channels in zip(out.features, teacher.feature_channels):
        assert feature.shape[:2] == (patch.shape[0], channels)
        assert feature.ndim == patch.ndim
        assert torch.isfinite(feature).all()
    if teacher.has_logits:
        assert out.logits.shape == (patch.shape[0], len(teacher.labels), *patch.shape[2:])
    else:
        assert out.logits is None

    student_stage = torch.randn(patch.shape[0], 8, *[max(1, s // 4) for s in patch.shape[2:]], requires_grad=True)
    conv = FeatureProjectors([8] * len(out.features), teacher.feature_channels, patch.ndim - 2)
    loss = sum(feature_distance(resize_to(p, t.shape[2:]), t, "mse")
               for p, t in zip(conv([student_stage] * len(out.features)), out.features))
    loss = loss + (1 - cka_per_stage([(student_stage, t) for t in out.features])).sum()
    loss.backward()
    assert torch.isfinite(loss) and student_stage.grad is not None and student_stage.grad.abs().sum() > 0
    return [f.shape for f in out.features]
