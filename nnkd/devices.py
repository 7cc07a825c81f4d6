"""The torch device a command runs on, chosen the way nnU-Net users expect."""

import ctypes
import ctypes.util
import functools
import multiprocessing
import os
import platform
import sys
from pathlib import Path

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
        keep_freed_memory()
    return torch.device(name)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_kept = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory torch frees on the CPU, so the next network pass reuses it instead of
    asking the kernel for fresh zeroed pages. Torch has no caching allocator on the CPU, and glibc serves every
    block above its mmap threshold (at most 32 MiB) with its own mmap, unmapped again on free: each forward pass
    of a 3D network on a large patch then faults in all of its activations, 4 KiB at a time (an 80×160×160 patch
    through a 0.64 M-parameter student: ~270,000 page faults per pass, ~45 % of its time; docs/deploy.md). With
    mmap off (M_MMAP_MAX 0) and no trimming, freed blocks stay in the heap; the process's peak memory is the same.

    Once per process, Linux with glibc only; `nnkd_keep_freed_memory=0` in the environment turns it off. Returns
    whether it is on."""
    global _kept
    if _kept is None:
        _kept = False
        if os.environ.get("nnkd_keep_freed_memory", "1") != "0" and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _kept


# CPU features that change how fast a convolution runs (fp32 vector width; int8 and bf16 dot products)
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                "amx_bf16", "asimd", "sve", "i8mm")


def cpu_identity(cpuinfo: str | None = None) -> dict:
    """The CPU beyond its architecture name: vendor model (family / model numbers where the name is generic,
    as on cloud machines that report only "AMD EPYC") and the vector features of CPU_FEATURES it has. Read from
    /proc/cpuinfo on Linux; platform.processor() elsewhere."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {"cpu": platform.processor() or None, "cpu_features": None}
    fields = {}
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())  # the first processor's entry
    name = fields.get("model name") or fields.get("Hardware") or platform.processor() or None
    numbers = [f"{k} {fields[k]}" for k in ("cpu family", "model", "CPU part") if fields.get(k)]
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {"cpu": ", ".join(filter(None, [name, *numbers])) or None,
            "cpu_features": [f for f in CPU_FEATURES if f in flags]}


# features with which oneDNN computes bf16 convolutions natively (elsewhere bf16 is emulated, slower than fp32)
BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16")
CPU_BF16_ENV = "nnkd_cpu_bf16"


@functools.cache
def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16)."""
    return any(f in BF16_CPU_FEATURES for f in cpu_identity()["cpu_features"] or ())


def cpu_bf16(device: torch.device) -> bool:
    """Whether training on this device runs in bf16 — the student's steps under bf16 autocast, the teacher's
    forward passes too —, as nnU-Net trains in float16 autocast on a GPU: on a CPU that computes bf16 natively,
    unless `nnkd_cpu_bf16=0` (`1` asks for it on any CPU, where it is emulated and slower). Never on a GPU, where
    nnU-Net's own autocast applies."""
    if device.type != "cpu":
        return False
    asked = os.environ.get(CPU_BF16_ENV, "auto")
    if asked not in ("auto", "0", "1"):
        raise NnkdError(f"{CPU_BF16_ENV}={asked} is not auto, 0 or 1", f"unset {CPU_BF16_ENV} or set it to 0 or 1")
    return asked == "1" or (asked == "auto" and cpu_computes_bf16())


VALIDATION_MIRRORING_ENV = "nnkd_val_mirroring"


def validation_mirroring() -> bool:
    """Whether a training's final validation mirrors each case as nnU-Net's does (its test-time augmentation:
    8 passes per window in 3D, 4 in 2D): yes, unless `nnkd_val_mirroring=0` — for short or exploratory CPU runs,
    whose validation is mostly those passes. Saved checkpoints keep nnU-Net's mirroring axes either way."""
    asked = os.environ.get(VALIDATION_MIRRORING_ENV, "1")
    if asked not in ("0", "1"):
        raise NnkdError(f"{VALIDATION_MIRRORING_ENV}={asked} is not 0 or 1",
                        f"unset {VALIDATION_MIRRORING_ENV} or set it to 0 or 1")
    return asked == "1"


def cpu_count() -> int:
    """The machine's CPU cores, as nnkd counts them everywhere (threads per job, machine records)."""
    return multiprocessing.cpu_count()


def cpu_threads() -> int:
    """Torch threads on the CPU: OMP_NUM_THREADS when it is a positive number, else every core."""
    asked = os.environ.get("OMP_NUM_THREADS", "")
    return int(asked) if asked.isdigit() and int(asked) > 0 else cpu_count()
