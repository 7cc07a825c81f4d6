"""nnU-Net's folder variables and dataset lookup, checked up front with clear errors."""

import json
import os
import re
from pathlib import Path

from nnkd.errors import NnkdError

_DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_(.+)$")


def require_env(*names: str) -> dict[str, Path]:
    """Return the nnU-Net folders named by `names` (e.g. 'nnUNet_raw'); stop if any is unset."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise NnkdError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set",
            "export nnUNet_raw, nnUNet_preprocessed and nnUNet_results as for nnU-Net "
            "(see nnU-Net's documentation/setting_up_paths.md)",
        )
    return {n: Path(os.environ[n]) for n in names}


def datasets_with_id(root: Path, dataset_id: int) -> list[str]:
    """Folder names `DatasetXXX_*` under `root` that carry `dataset_id`."""
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(os.listdir(root)):
        match = _DATASET_FOLDER.match(entry)
        if match and int(match.group(1)) == dataset_id and (root / entry).is_dir():
            found.append(entry)
    return found


def raw_dataset_json(raw_dataset: Path) -> dict:
    """A raw dataset's dataset.json ($nnUNet_raw/DatasetXXX_Name), or one clear line when it is missing or broken."""
    path = Path(raw_dataset) / "dataset.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise NnkdError(f"{Path(raw_dataset).name} has no dataset.json in {Path(raw_dataset).parent}",
                        "put the raw dataset there (nnU-Net's layout: dataset.json, imagesTr, labelsTr)") from e
    except ValueError as e:
        raise NnkdError(f"{path} is not valid JSON", "fix the raw dataset's dataset.json") from e


def parse_fold(fold: str | int):
    """nnU-Net's fold argument: an integer, or "all"."""
    fold = str(fold)
    if fold == "all":
        return fold
    if fold.isdigit():
        return int(fold)
    raise NnkdError(f"fold '{fold}' is invalid", "use 0-4 or all")


def find_dataset_name(dataset: str | int) -> str:
    """Resolve a dataset ID or `DatasetXXX_Name` as nnU-Net does, with one clear error line."""
    text = str(dataset)
    match = _DATASET_FOLDER.match(text)
    if match:
        dataset_id = int(match.group(1))
    elif text.isdigit():
        dataset_id = int(text)
    else:
        raise NnkdError(f"'{text}' is not a dataset ID", "give a number like 990 or a name like Dataset990_Synthetic")
    roots = [Path(os.environ[n]) for n in ("nnUNet_raw", "nnUNet_preprocessed") if os.environ.get(n)]
    names = sorted({name for root in roots for name in datasets_with_id(root, dataset_id)})
    if not names:
        raise NnkdError(
            f"dataset {dataset_id:03d} not found in {' or '.join(str(r) for r in roots)}",
            "check the ID, or create it (e.g. nnkd_make_synthetic -d %d)" % dataset_id,
        )
    if len(names) > 1:
        raise NnkdError(
            f"dataset ID {dataset_id:03d} is used by several folders: {', '.join(names)}",
            "rename or remove all but one",
        )
    return names[0]
