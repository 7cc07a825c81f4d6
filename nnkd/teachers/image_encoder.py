"""Shared shape of the 2D foundation image encoders (SAM, DINOv2, Swin, …): feature-only teachers
behind an InputBridge, run on 2D patches directly and on 3D patches slice by slice."""

from abc import abstractmethod

import torch

from nnkd.teachers.base import Teacher, TeacherOutput
from nnkd.teachers.bridge import InputBridge, run_slicewise


class ImageEncoderTeacher(Teacher):
    spatial_dims = 2
    in_channels = 1  # a grayscale patch, repeated to the model's RGB channels by the bridge

    def __init__(self, bridge: InputBridge, feature_channels: list[int], feature_strides: list[tuple[int, int]],
                 max_slices: int):
        super().__init__()
        self.bridge = bridge
        self.feature_channels = list(feature_channels)
        self.feature_strides = [tuple(s) for s in feature_strides]
        self.max_slices = max_slices

    @abstractmethod
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Stage maps (N, Ck, h, w) for bridged images (N, model channels, *native size)."""

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(run_slicewise(lambda s: self.encode(self.bridge(s)), x, self.max_slices), None)

    @property
    def serves_dims(self) -> tuple[int, ...]:
        return (2, 3)

    def describe(self) -> dict:
        return super().describe() | {"input_size": list(self.bridge.size or []), "max_slices": self.max_slices}
