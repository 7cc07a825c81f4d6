"""Writing an nnU-Net raw dataset so that it appears complete or not at all."""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nnkd.atomic import replace_folder
from nnkd.errors import NnkdError
from nnkd.nnunet_env import datasets_with_id

SUBFOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")


@contextmanager
def staged_raw_dataset(raw_root: Path, dataset_id: int, folder_name: str, overwrite: bool,
                       resumable: bool = False) -> Iterator[Path]:
    """A staging folder with nnU-Net's raw sub-folders, swapped in as raw_root/folder_name when the block
    ends without error. A dataset ID used by another dataset, or an existing one without `overwrite`,
    stops before anything is written. `resumable`: the staging folder has a fixed name and is kept when the
    block fails or the process is killed, so a rerun finds what was done (nnU-Net lists only `Dataset*`
    folders, never this hidden one)."""
    raw_root = Path(raw_root)
    target = raw_root / folder_name
    others = [n for n in datasets_with_id(raw_root, dataset_id) if n != folder_name]
    if others:
        raise NnkdError(f"dataset ID {dataset_id:03d} is already used by {others[0]}",
                        "pick another -d or remove that dataset")
    if target.exists() and not overwrite:
        raise NnkdError(f"{target} already exists", "pass --overwrite to replace it")
    raw_root.mkdir(parents=True, exist_ok=True)
    staging = raw_root / (f".{folder_name}.partial" if resumable else f".{folder_name}.tmp-{os.getpid()}")
    if not resumable:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        for sub in SUBFOLDERS:
            (staging / sub).mkdir(parents=True, exist_ok=True)
        yield staging
        replace_folder(staging, target)
    finally:
        if not resumable:
            shutil.rmtree(staging, ignore_errors=True)
