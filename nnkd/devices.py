"""The torch device a command runs on, chosen the way nnU-Net users expect."""

import multiprocessing

import torch

from nnkd.errors import NnkdError


def resolve_device(name: str | None) -> torch.device:
    """cuda when a GPU is visible and nothing was asked for, else cpu (using every core, as nnU-Net does)."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda", "mps"):
        raise NnkdError(f"unknown device '{name}'", "use cpu, cuda or mps")
    if name == "cuda" and not torch.cuda.is_available():
        raise NnkdError("device cuda was asked for but no CUDA GPU is visible", "use -device cpu")
    if name == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    return torch.device(name)
