"""Small JSON records kept in a run's fold folder (teacher.json, tasks.json, tuning.json)."""

import json
from dataclasses import asdict, fields
from pathlib import Path

from nnkd.atomic import write_json_atomic
from nnkd.errors import NnkdError


class JsonRecord:
    """A dataclass kept as JSON in a fold folder: written atomically, read back when a run resumes."""
    FILE: str

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, fold_folder: Path) -> None:
        write_json_atomic(Path(fold_folder) / self.FILE, self.to_json())

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
            data = json.loads(path.read_text())
        except ValueError as e:
            raise NnkdError(f"{path} is corrupt ({e})", "delete it and start the run again without --c") from e
        unknown = sorted(set(data) - {f.name for f in fields(cls)}) if isinstance(data, dict) else []
        if unknown:
            from nnkd import __version__

            writer = (data.get("versions") or {}).get("nnkd") or "another version"
            raise NnkdError(f"{path} was written by nnkd {writer}: its field(s) {', '.join(unknown)} are unknown to "
                            f"nnkd {__version__}", "resume it with the nnkd that started it, or start a new run")
        try:
            return cls.from_json(data)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise NnkdError(f"{path} is corrupt ({e})", "delete it and start the run again without --c") from e


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
