"""Model folders and folds, the one way: a model folder's plans and dataset.json, which of its folds are trained,
and which cases nnU-Net's split (`splits_final.json`) gives a fold for training and validation."""

import json
from pathlib import Path

from nnkd.errors import NnkdError

SPLITS = "splits_final.json"


def read_model_folder(model_folder: Path, what: str = "model folder") -> tuple[dict, dict]:
    """(plans, dataset.json) of an nnU-Net model folder (`<trainer>__<plans>__<configuration>`: plans.json,
    dataset.json, fold_X/), with one clear line when either is missing or broken; `what` names the folder there."""
    found = []
    for name in ("plans.json", "dataset.json"):
        path = Path(model_folder) / name
        try:
            found.append(json.loads(path.read_text()))
        except FileNotFoundError as e:
            raise NnkdError(f"{name} missing in {what} {model_folder}",
                            "give an nnU-Net model folder (with plans.json, dataset.json, fold_X/)") from e
        except ValueError as e:
            raise NnkdError(f"{path} is not valid JSON", "restore the folder from its source") from e
    return found[0], found[1]


def trained_folds(model_folder: Path, checkpoint: str = "checkpoint_final.pth") -> list[str]:
    """The folds of an nnU-Net model folder that hold `checkpoint`: numbered folds in order, then "all"."""
    found = {p.parent.name.removeprefix("fold_") for p in Path(model_folder).glob(f"fold_*/{checkpoint}")}
    numbered = sorted((f for f in found if f.isdigit()), key=int)
    return numbered + (["all"] if "all" in found else [])


def numbered_or_all(folds: list[str]) -> list[str]:
    """As nnUNetv2_predict picks a model's folds: every numbered fold, or fold "all" when it is the only one."""
    return [f for f in folds if f != "all"] or [f for f in folds if f == "all"]


def read_splits(preprocessed_dataset: Path) -> list[dict] | None:
    """nnU-Net's split of a preprocessed dataset (a list of {"train", "val"}), None when it has none yet."""
    path = Path(preprocessed_dataset) / SPLITS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise NnkdError(f"{path} is not valid JSON", "delete it; nnU-Net makes a new split when it trains") from e


def cases_of_fold(splits: list[dict], fold, part: str) -> list[str]:
    """The cases of `fold` ("all" or an integer) in `part` ("train" or "val"): fold all trains and validates on
    every case, as nnU-Net does."""
    if str(fold) == "all":
        return sorted({c for split in splits for side in ("train", "val") for c in split[side]})
    fold = int(fold)
    if not 0 <= fold < len(splits):
        raise NnkdError(f"fold {fold} is not in the dataset's {SPLITS} ({len(splits)} folds)",
                        "use a fold the split defines")
    return list(splits[fold][part])


def split_cases(preprocessed_dataset: Path, fold, part: str) -> list[str]:
    """cases_of_fold of the dataset's split on disk; a dataset without one stops with a clear line."""
    splits = read_splits(preprocessed_dataset)
    if splits is None:
        raise NnkdError(f"no {SPLITS} in {preprocessed_dataset}", "train a fold of it first (nnU-Net writes the "
                                                                  "split when it starts)")
    return cases_of_fold(splits, fold, part)
