"""Loading checkpoints without running code hidden in them, and fingerprinting them."""

import hashlib
from pathlib import Path

import numpy as np
import torch

from nnkd.errors import NnkdError

# Plain data nnU-Net checkpoints hold besides tensors (numpy scalars and arrays in the training log).
_SAFE_GLOBALS = [np.core.multiarray.scalar if hasattr(np, "core") else None, np.dtype, np.ndarray,
                 np.core.multiarray._reconstruct if hasattr(np, "core") else None]
_SAFE_GLOBALS += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """torch.load with weights_only=True (no arbitrary unpickling), with one clear error for bad files."""
    path = Path(path)
    if not path.is_file():
        raise NnkdError(f"checkpoint {path} not found", "check the path or the fold")
    try:
        with torch.serialization.safe_globals([g for g in _SAFE_GLOBALS if g is not None]):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated, foreign or unsafe files
        raise NnkdError(f"cannot load checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                        "the file is truncated, corrupt, not a PyTorch checkpoint or holds non-tensor code") from e
    if not isinstance(checkpoint, dict):
        raise NnkdError(f"{path} is not an nnU-Net checkpoint (no dict inside)", "point to a checkpoint_*.pth file")
    return checkpoint
