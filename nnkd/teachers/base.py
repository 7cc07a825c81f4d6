"""The Teacher interface every model family implements."""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TeacherOutput:
    features: list[torch.Tensor]  # stage features, coarsest last
    logits: torch.Tensor | None  # full-resolution segmentation logits, None for feature-only teachers


class Teacher(nn.Module, ABC):
    """A frozen model that sees the student's nnU-Net-normalized patch.

    Subclasses set, before the first step: `spatial_dims`, `in_channels`, `feature_channels` (one per
    stage), `feature_strides` (cumulative downsampling per stage and axis), `labels` (dict like
    dataset.json's, or None without logits), and optionally `plans_configuration` (the nnU-Net plans
    configuration whose preprocessing the teacher expects).
    """

    spatial_dims: int
    in_channels: int
    feature_channels: list[int]
    feature_strides: list[tuple[int, ...]]
    labels: dict | None = None
    plans_configuration: dict | None = None
    spec: str = ""
    checkpoint_path: str | None = None
    checkpoint_sha256: str | None = None

    @property
    def has_logits(self) -> bool:
        return self.labels is not None

    def freeze(self) -> "Teacher":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # a teacher never leaves eval mode (dropout, norm statistics)

    @abstractmethod
    def forward(self, x: torch.Tensor) -> TeacherOutput:
        """Stage features and logits for a batch of normalized patches."""
