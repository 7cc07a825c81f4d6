"""The torch device a command runs on, chosen the way nnU-Net users expect."""

import multiprocessing
import os

import torch

from nnkd.errors import NnkdError


def resolve_device(name: str | None) -> torch.device:
    """cuda when a GPU is visible and nothing was asked for, else cpu: every core, as nnU-Net does, unless
    OMP_NUM_THREADS asks for fewer (several trainings side by side, e.g. nnkd_benchmark --jobs)."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda", "mps"):
        raise NnkdError(f"unknown device '{name}'", "use cpu, cuda or mps")
    if name == "cuda" and not torch.cuda.is_available():
        raise NnkdError("device cuda was asked for but no CUDA GPU is visible", "use -device cpu")
    if name == "cpu":
        torch.set_num_threads(cpu_threads())
    return torch.device(name)


def cpu_count() -> int:
    """The machine's CPU cores, as nnkd counts them everywhere (threads per job, machine records)."""
    return multiprocessing.cpu_count()


def cpu_threads() -> int:
    """Torch threads on the CPU: OMP_NUM_THREADS when it is a positive number, else every core."""
    asked = os.environ.get("OMP_NUM_THREADS", "")
    return int(asked) if asked.isdigit() and int(asked) > 0 else cpu_count()
