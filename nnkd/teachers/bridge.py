"""The bridge from the student's nnU-Net-normalized patch to a teacher's own input.

A foundation model expects its own intensity range, channel count and input size; nnU-Net hands the
student a z-scored (or CT-windowed) patch. `InputBridge` maps one to the other per image, and
`run_slicewise` applies a 2D model to a 3D patch on a bounded number of evenly spaced slices.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def unit_range(x: torch.Tensor, low: float = 0.005, high: float = 0.995) -> torch.Tensor:
    """Per image and channel: the [low, high] percentile window of (N, C, …) mapped onto [0, 1], clipped."""
    flat = x.flatten(2).float()
    if flat.shape[-1] > 1 << 24:  # torch.quantile's input limit; a strided subset estimates it well
        flat = flat[..., :: flat.shape[-1] // (1 << 23) + 1]
    q = torch.quantile(flat, torch.tensor([low, high], device=x.device, dtype=flat.dtype), dim=-1)
    shape = (*x.shape[:2],) + (1,) * (x.ndim - 2)
    lo, hi = q[0].reshape(shape), q[1].reshape(shape)
    return ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


@dataclass(frozen=True)
class InputBridge:
    """Intensity mapping, channel repeat and resize, from normalized patches to the model's input.

    `scale` is "unit" (per-image 0.5–99.5 percentile window onto [0, 1], then × `value_range`),
    "unit-zscore" (that window, then standardised per image, as deepbet does) or "none" (the nnU-Net
    normalization is kept, e.g. for models trained on z-scored images); then (x − mean) / std per channel.
    `size` is the model's native spatial size (None: keep the patch size).
    """

    channels: int = 3
    size: tuple[int, ...] | None = None
    scale: str = "unit"
    value_range: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale in ("unit", "unit-zscore"):
            x = unit_range(x) * self.value_range
            if self.scale == "unit-zscore":
                dims = tuple(range(2, x.ndim))
                x = (x - x.mean(dims, keepdim=True)) / x.std(dims, keepdim=True).clamp_min(1e-6)
        elif self.scale != "none":
            raise ValueError(f"unknown intensity scale '{self.scale}'")
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, *x.shape[2:]) if x.shape[1] == 1 else x
        if self.size is not None and tuple(x.shape[2:]) != tuple(self.size):
            mode = "bilinear" if x.ndim == 4 else "trilinear"
            x = F.interpolate(x, size=tuple(self.size), mode=mode, align_corners=False)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).reshape(shape)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).reshape(shape)
        return (x - mean) / std


def slice_indices(depth: int, max_slices: int) -> list[int]:
    """Centres of `max_slices` equal bins along an axis of `depth` (all slices if depth ≤ max_slices), so
    the stacked slice features line up with the patch when resampled to another grid."""
    if depth <= max_slices:
        return list(range(depth))
    return [int((i + 0.5) * depth / max_slices) for i in range(max_slices)]


def run_slicewise(encode: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor,
                  max_slices: int) -> list[torch.Tensor]:
    """A 2D encoder on (N, C, Y, X) as is; on (N, C, Z, Y, X), on ≤ `max_slices` slices along Z (nnU-Net's
    first, out-of-plane axis) in one batch, features stacked back to (N, Ck, S, h, w)."""
    if x.ndim == 4:
        return encode(x)
    n, c, depth = x.shape[:3]
    picked = x[:, :, slice_indices(depth, max_slices)]
    slices = picked.shape[2]
    features = encode(picked.movedim(2, 1).reshape(n * slices, c, *x.shape[3:]))
    return [f.reshape(n, slices, *f.shape[1:]).movedim(1, 2) for f in features]


def pad_to_multiple(x: torch.Tensor, divisible_by) -> torch.Tensor:
    """Zero-pad the end of each spatial axis so the model's strides divide it."""
    pad = [(-s) % d for s, d in zip(x.shape[2:], divisible_by)]
    return F.pad(x, [v for p in reversed(pad) for v in (0, p)]) if any(pad) else x


def crop_to_input(features: list[torch.Tensor], strides, size) -> list[torch.Tensor]:
    """Drop the stage-map cells that only saw `pad_to_multiple`'s padding, so maps stay aligned with the input."""
    return [f[(slice(None), slice(None), *[slice(0, -(-n // s)) for n, s in zip(size, stride)])]
            for f, stride in zip(features, strides)]
