"""teacher.json: what a distillation run was started with, kept in its fold folder.

The trainer reads it at construction, so a run configures itself the same way whether it is started by
nnkd_train, resumed with --c, spawned per GPU by nnU-Net's DDP launcher, or run by stock nnUNetv2_train.
"""

from dataclasses import dataclass, field

from nnkd.records import JsonRecord

RUN_FILE = "teacher.json"
SCHEDULE_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch")


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

    @property
    def teacher_entries(self) -> list[dict]:
        """Every teacher entry of the run: `teachers`, or the single `teacher`, or none."""
        return self.teachers or ([self.teacher] if self.teacher else [])


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's global RNGs (network initialisation, the main process's sampling).
    nnU-Net's augmentation workers draw their own seeds, so runs with the same seed are repeats, not copies."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
