"""teacher.json: what a distillation run was started with, kept in its fold folder.

The trainer reads it at construction, so a run configures itself the same way whether it is started by
nnkd_train, resumed with --c, spawned per GPU by nnU-Net's DDP launcher, or run by stock nnUNetv2_train.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nnkd.atomic import write_json_atomic
from nnkd.errors import NnkdError

RUN_FILE = "teacher.json"
SCHEDULE_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch")


class JsonRecord:
    """A dataclass kept as JSON in a fold folder: written atomically, read back when a run resumes."""
    FILE: str

    def save(self, fold_folder: Path) -> None:
        write_json_atomic(Path(fold_folder) / self.FILE, asdict(self))

    @classmethod
    def from_json(cls, data: dict):
        return cls(**data)

    @classmethod
    def load(cls, fold_folder: Path):
        """The record, or None when the folder has none; a damaged one is one clear error."""
        path = Path(fold_folder) / cls.FILE
        if not path.is_file():
            return None
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError) as e:
            raise NnkdError(f"{path} is corrupt ({e})", "delete it and start the run again without --c") from e


@dataclass
class RunConfig(JsonRecord):
    FILE = RUN_FILE
    method: str
    trainer: str
    teacher: dict | None = None  # {"spec": ..., "checkpoint": ..., "sha256": ...}
    teachers: list[dict] | None = None  # several such entries, for methods that distil several teachers
    hyperparameters: dict = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)
    labeled: int | None = None  # keep only this many labelled training cases of the fold
    transfer: list[str] | None = None  # transfer-set folders (unlabelled, synthetic cases) for KD-only samples
    seed: int | None = None  # seeds Python's, NumPy's and torch's RNGs before the networks are built
    versions: dict = field(default_factory=dict)  # nnkd, nnU-Net and torch versions the run was started with


def software_versions() -> dict:
    """The versions a result depends on, for run records."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    found = {"torch": torch.__version__}
    for package in ("nnkd", "nnunetv2", "dynamic-network-architectures"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's global RNGs (network initialisation, the main process's sampling).
    nnU-Net's augmentation workers draw their own seeds, so runs with the same seed are repeats, not copies."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
