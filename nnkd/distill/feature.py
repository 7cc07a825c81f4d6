"""FitNets-style feature distillation: project student stages to teacher channels and compare."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def pair_stages_by_resolution(student_strides, teacher_strides) -> list[int]:
    """For each student stage, the teacher stage whose cumulative stride is closest (log scale).

    Strides are per-axis tuples; a 2D teacher's in-plane strides are compared with the student's last two
    axes; ties go to the deeper stage. Student stages that land on a resolution several teacher stages
    share (a ViT's blocks) are spread over those stages in depth order. With the same plans this is the
    identity pairing.
    """
    def distance(a, b):
        n = min(len(a), len(b))
        return sum(abs(math.log2(x) - math.log2(y)) for x, y in zip(a[-n:], b[-n:]))

    nearest = []
    for s in student_strides:
        deepest_best = -min((distance(s, t), -j) for j, t in enumerate(teacher_strides))[1]
        nearest.append(tuple(j for j, t in enumerate(teacher_strides)
                             if tuple(t) == tuple(teacher_strides[deepest_best])))
    pairs = []
    for i, group in enumerate(nearest):
        sharing = [k for k, g in enumerate(nearest) if g == group]
        rank, count = sharing.index(i), len(sharing)
        pairs.append(group[-1] if count == 1 else group[round(rank * (len(group) - 1) / (count - 1))])
    return pairs


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "trilinear" if x.ndim == 5 else "bilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean squared error, or mean (1 − cosine similarity) over channels, in float32."""
    student, teacher = student.float(), teacher.float()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=1, eps=1e-6)).mean()
    raise ValueError(f"unknown feature distance '{kind}' (use mse or cosine)")


class FeatureProjectors(nn.Module):
    """One 1×1 convolution per distilled stage, student channels → teacher channels."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int], spatial_dims: int):
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.projectors = nn.ModuleList(conv(s, t, kernel_size=1) for s, t in zip(student_channels, teacher_channels))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p(f) for p, f in zip(self.projectors, features)]
