"""teacher.json: what a distillation run was started with, kept in its fold folder.

The trainer reads it at construction, so a run configures itself the same way whether it is started by
nnkd_train, resumed with --c, spawned per GPU by nnU-Net's DDP launcher, or run by stock nnUNetv2_train.
"""

from dataclasses import asdict, dataclass, field

from nnkd.records import JsonRecord

RUN_FILE = "teacher.json"
# nnU-Net's schedule attributes a run may set, and the command-line flag of each
SCHEDULE_FLAGS = {"num_epochs": "--epochs", "num_iterations_per_epoch": "--iterations-per-epoch",
                  "num_val_iterations_per_epoch": "--val-iterations-per-epoch"}
SCHEDULE_KEYS = tuple(SCHEDULE_FLAGS)


@dataclass
class TeacherEntry:
    """One teacher of a run as teacher.json records it: its spec, and the checkpoint the run must keep using."""
    spec: str
    checkpoint: str | None = None  # the checkpoint file the spec resolved to
    sha256: str | None = None  # its digest: a resumed run refuses a changed teacher
    cache: str | None = None  # the teacher cache folder the run reads instead of running the teacher
    dataset: str | None = None  # the task it teaches (LoRKD: one teacher per dataset)

    @classmethod
    def of(cls, value) -> "TeacherEntry | None":
        """An entry from its JSON object (or an entry, or None)."""
        return value if value is None or isinstance(value, cls) else cls(**value)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class RunConfig(JsonRecord):
    FILE = RUN_FILE
    method: str
    trainer: str
    teacher: TeacherEntry | None = None
    teachers: list[TeacherEntry] | None = None  # several entries, for methods that distil several teachers
    hyperparameters: dict = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)
    labeled: int | None = None  # keep only this many labelled training cases of the fold
    transfer: list[str] | None = None  # transfer-set folders (unlabelled, synthetic cases) for KD-only samples
    seed: int | None = None  # seeds Python's, NumPy's and torch's RNGs before the networks are built
    versions: dict = field(default_factory=dict)  # nnkd, nnU-Net and torch versions the run was started with

    def __post_init__(self):
        self.teacher = TeacherEntry.of(self.teacher)
        self.teachers = None if self.teachers is None else [TeacherEntry.of(e) for e in self.teachers]

    def to_json(self) -> dict:
        data = asdict(self)
        data["teacher"] = self.teacher.to_json() if self.teacher else None
        data["teachers"] = None if self.teachers is None else [e.to_json() for e in self.teachers]
        return data

    @property
    def teacher_entries(self) -> list[TeacherEntry]:
        """Every teacher entry of the run: `teachers`, or the single `teacher`, or none."""
        return self.teachers or ([self.teacher] if self.teacher else [])

    @property
    def teacher_specs(self) -> list[str]:
        return [e.spec for e in self.teacher_entries]

    @property
    def reads_cache(self) -> bool:
        """The run reads its teacher's stored predictions rather than running the teacher."""
        return bool(self.teacher and self.teacher.cache)


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's global RNGs (network initialisation, the main process's sampling).
    nnU-Net's augmentation workers draw their own seeds, so runs with the same seed are repeats, not copies."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
