"""Deep Reprogramming Distillation: teacher stage features reprogrammed into the student's own path.

A projector φ_i maps teacher stage features to the student's stage-i shape; the student's later encoder
stages, decoder and head then run on them (stage by stage, no hooks), giving "hybrid" logits.
"""

import torch
from torch import nn

from nnkd.distill.feature import resize_to


class ReprogrammingProjector(nn.Module):
    """φ_i: resize to the student's grid, then conv3-norm-act, conv3-norm-act, conv1 to its channels."""

    def __init__(self, teacher_channels: int, student_channels: int, spatial_dims: int):
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        self.body = nn.Sequential(
            conv(teacher_channels, student_channels, 3, padding=1), norm(student_channels, affine=True),
            nn.LeakyReLU(inplace=True),
            conv(student_channels, student_channels, 3, padding=1), norm(student_channels, affine=True),
            nn.LeakyReLU(inplace=True),
            conv(student_channels, student_channels, 1))

    def forward(self, teacher_feature: torch.Tensor, size) -> torch.Tensor:
        return self.body(resize_to(teacher_feature, size))


class Reprogramming(nn.Module):
    """One projector per reprogrammed student stage."""

    def __init__(self, teacher_channels: list[int], student_channels: list[int], spatial_dims: int):
        super().__init__()
        self.projectors = nn.ModuleList(ReprogrammingProjector(t, s, spatial_dims)
                                        for t, s in zip(teacher_channels, student_channels))

    def forward(self, teacher_features: list[torch.Tensor], sizes) -> list[torch.Tensor]:
        return [p(f, size) for p, f, size in zip(self.projectors, teacher_features, sizes)]


def hybrid_outputs(network: nn.Module, student_skips: list[torch.Tensor], stage: int, features: torch.Tensor):
    """The student's decoder output when stage `stage` is replaced by `features`: earlier skips are the
    student's own, later stages are recomputed from `features` by the student's own encoder stages."""
    skips = list(student_skips[:stage]) + [features]
    x = features
    for block in network.encoder.stages[stage + 1:]:
        x = block(x)
        skips.append(x)
    return network.decoder(skips)


def linear_decay(epoch: int, num_epochs: int) -> float:
    """1 at the first epoch, 0 at the last, linear in between."""
    return max(0.0, 1.0 - epoch / max(1, num_epochs - 1))
