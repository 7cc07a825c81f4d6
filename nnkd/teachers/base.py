"""The Teacher interface every model family implements."""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nnkd.devices import cpu_bf16


@dataclass
class TeacherOutput:
    features: list[torch.Tensor]  # stage features, coarsest last
    logits: torch.Tensor | None  # full-resolution segmentation logits, None for feature-only teachers
    valid: torch.Tensor | None = None  # (N, *spatial) voxels where the logits are known; None: everywhere


class Teacher(nn.Module, ABC):
    """A frozen model that sees the student's nnU-Net-normalized patch.

    Subclasses set, before the first step: `spatial_dims` (of the model itself), `in_channels`,
    `feature_channels` (one per stage), `feature_strides` (cumulative downsampling per stage and axis of
    the model's own input; a 2D model states in-plane strides), `labels` (dict like dataset.json's, or
    None without logits), and optionally `plans_configuration` (the nnU-Net plans configuration whose
    preprocessing the teacher expects). Features come back with the patch's dimensionality.
    """

    spatial_dims: int
    in_channels: int
    feature_channels: list[int]
    feature_strides: list[tuple[int, ...]]
    labels: dict | None = None
    plans_configuration: dict | None = None
    lora_targets: tuple[str, ...] = ()  # module-name suffixes of the attention projections (LoRA tuning)
    spec: str = ""
    checkpoint_path: str | None = None
    checkpoint_sha256: str | None = None

    @property
    def has_logits(self) -> bool:
        return self.labels is not None

    @property
    def serves_dims(self) -> tuple[int, ...]:
        """Patch dimensionalities the teacher can take; image encoders also take 3D patches slice by slice."""
        return (self.spatial_dims,)

    def set_checkpoint(self, *paths: str | Path) -> None:
        """Record the weights file(s) (`;`-joined for an ensemble), so a run can tell when they change."""
        from nnkd.checkpoints import fingerprint

        self.checkpoint_path = ";".join(str(p) for p in paths)
        self.checkpoint_sha256 = fingerprint([Path(p) for p in paths])

    def describe(self) -> dict:
        """What a user must know before training: dimensionality, channels, stages, logits."""
        return {"spec": self.spec, "spatial_dims": self.spatial_dims, "serves_dims": list(self.serves_dims),
                "in_channels": self.in_channels, "parameters": sum(p.numel() for p in self.parameters()),
                "stages": [{"channels": c, "stride": list(s)}
                           for c, s in zip(self.feature_channels, self.feature_strides)],
                "logits": self.has_logits, "labels": self.labels, "checkpoint": self.checkpoint_path}

    def nnunet_network(self) -> tuple[nn.Module, dict, str] | None:
        """(network, plans, configuration) when this teacher is exactly one stock nnU-Net network (an nnU-Net
        teacher of one fold): nnU-Net's predictor and the ONNX export then run it as any nnU-Net model. None for
        every other teacher."""
        return None

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

    def infer(self, x: torch.Tensor) -> TeacherOutput:
        """What a student learns from in training: the forward pass without gradients, in bf16 where training runs
        in bf16 (`nnkd.devices.cpu_bf16`: CPUs that compute it natively; ~2× faster, the logits within a KL of
        ~1e-5 of float32's), the results in float32."""
        bf16 = cpu_bf16(x.device)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = self(x)
        if not bf16:
            return out
        return TeacherOutput([f.float() for f in out.features], None if out.logits is None else out.logits.float(),
                             out.valid)
