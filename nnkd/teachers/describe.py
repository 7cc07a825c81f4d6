"""What a teacher is and costs, measured the way training will use it."""

import time

import torch

from nnkd.teachers.base import Teacher


def default_patch(teacher: Teacher) -> tuple[int, ...]:
    """A typical nnU-Net patch of a dimensionality the teacher serves."""
    return (32, 64, 64) if 3 in teacher.serves_dims else (128, 128)


def time_forward(teacher: Teacher, patch: tuple[int, ...], repeats: int = 1) -> tuple[float, list[list[int]]]:
    """Median seconds of one no-grad forward pass on a random patch, and the shapes of its stage features.
    Two warm-up passes first: TorchScript's profiling executor optimizes a model on its second call."""
    device = next(teacher.parameters()).device
    x = torch.randn(1, teacher.in_channels, *patch, device=device)
    times = []
    with torch.no_grad():
        out = teacher(x)
        teacher(x)
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            teacher(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], [list(f.shape[1:]) for f in out.features]


def format_description(info: dict) -> str:
    lines = [f"teacher      {info['spec']}",
             f"checkpoint   {info['checkpoint'] or '-'}",
             f"parameters   {info['parameters'] / 1e6:.2f} M",
             f"model        {info['spatial_dims']}D, {info['in_channels']} input channel(s); serves "
             + " and ".join(f"{d}D" for d in info["serves_dims"]) + " patches"]
    if info.get("input_size"):
        lines.append(f"input size   {'×'.join(map(str, info['input_size']))} (each patch or slice is resized to it)"
                     + (f", at most {info['max_slices']} slices per 3D patch" if info.get("max_slices") else ""))
    logits = "yes: " + ", ".join(info["labels"]) if info["logits"] else "no (feature methods only)"
    lines.append(f"logits       {logits}")
    lines.append("stages       channels  stride (of the model's own input)")
    lines += [f"  {i:<10} {s['channels']:>8}  {'×'.join(map(str, s['stride']))}" for i, s in enumerate(info["stages"])]
    if "forward_seconds" in info:
        shapes = ", ".join("×".join(map(str, s)) for s in info["feature_shapes"])
        lines.append(f"forward      {info['forward_seconds']:.3f} s per patch {'×'.join(map(str, info['patch']))} "
                     f"on {info['device']}; features {shapes}")
    return "\n".join(lines)
