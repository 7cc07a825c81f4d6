"""Loading checkpoints without running code hidden in them, and fingerprinting them."""

import hashlib
import re
import threading
from pathlib import Path

import numpy as np
import torch

from nnkd.errors import NnkdError

_multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
# Plain data nnU-Net checkpoints hold besides tensors (numpy scalars and arrays in the training log),
# under numpy 2's and numpy 1's module names.
_SAFE_GLOBALS = [np.ndarray, np.dtype, _multiarray.scalar, _multiarray._reconstruct,
                 (_multiarray.scalar, "numpy.core.multiarray.scalar"),
                 (_multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
_SAFE_GLOBALS += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "int16", "uint8",
                                               "bool")]
# torch's safe_globals context adds to and removes from one process-wide list: two threads loading at once
# (nnkd_benchmark --jobs) would take each other's allowances away mid-load, so loads go one at a time.
_LOAD_LOCK = threading.RLock()


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(paths: list[Path]) -> str:
    """sha256 of one checkpoint file, or of the files' digests for an ensemble of several."""
    digests = [sha256_of(Path(p)) for p in paths]
    return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()


def _failure_reason(error: Exception) -> tuple[str, bool]:
    """The part of torch's message that says what is wrong, and whether a pickled global (code or a class
    that is not plain data) was refused. torch words it `Unsupported global: GLOBAL x.y was not an allowed
    global …` or, for modules such as os and subprocess, `… unsupported GLOBAL posix.system whose module
    posix is blocked`."""
    text = str(error).strip()
    refused = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]*\w)", text, flags=re.IGNORECASE)
    if refused:
        return f"Unsupported global: GLOBAL {refused.group(1)} (pickled code or a class, not weights)", True
    return (text.splitlines()[0].split(". ")[0][:160] if text else type(error).__name__), False


def load_checkpoint(path: Path, map_location="cpu", allowed_globals=()) -> dict:
    """torch.load with weights_only=True (no arbitrary unpickling), with one clear error for bad files.
    `allowed_globals` adds plain-data classes a format is known to carry (e.g. argparse.Namespace)."""
    path = Path(path)
    if not path.is_file():
        raise NnkdError(f"checkpoint {path} not found", "check the path or the fold")
    try:
        with _LOAD_LOCK, torch.serialization.safe_globals(_SAFE_GLOBALS + list(allowed_globals)):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated, foreign or unsafe files
        reason, refused = _failure_reason(e)
        raise NnkdError(f"cannot load checkpoint {path}: {reason}",
                        "nnkd never runs code from a checkpoint: use one that holds only weights, e.g. saved with "
                        "torch.save(model.state_dict(), …)" if refused else
                        "the file is truncated, corrupt or not a PyTorch checkpoint; restore it from its source"
                        ) from e
    if not isinstance(checkpoint, dict):
        raise NnkdError(f"{path} holds a {type(checkpoint).__name__}, not a dict of weights",
                        "point to a checkpoint file saved with torch.save(state_dict or {…: state_dict})")
    return checkpoint
