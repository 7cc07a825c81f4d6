"""nnkd.folds: the one reading of a model folder's trained folds and of nnU-Net's split."""

import json

import pytest

from nnkd.errors import NnkdError
from nnkd.folds import cases_of_fold, numbered_or_all, read_splits, split_cases, trained_folds


def test_trained_folds_are_numbered_in_order_then_all_and_only_those_with_the_checkpoint(tmp_path):
    for fold, name in [("10", "checkpoint_final.pth"), ("2", "checkpoint_final.pth"), ("all", "checkpoint_final.pth"),
                       ("3", "checkpoint_latest.pth")]:
        (tmp_path / f"fold_{fold}").mkdir()
        (tmp_path / f"fold_{fold}" / name).write_bytes(b"")
    assert trained_folds(tmp_path) == ["2", "10", "all"]
    assert trained_folds(tmp_path, "checkpoint_latest.pth") == ["3"]
    assert numbered_or_all(trained_folds(tmp_path)) == ["2", "10"]
    assert numbered_or_all(["all"]) == ["all"] and numbered_or_all([]) == []


def test_a_folds_cases_come_from_the_split_and_fold_all_has_every_case(tmp_path):
    splits = [{"train": ["b", "c"], "val": ["a"]}, {"train": ["a", "c"], "val": ["b"]}]
    assert read_splits(tmp_path) is None
    with pytest.raises(NnkdError, match="no splits_final.json"):
        split_cases(tmp_path, 0, "val")
    (tmp_path / "splits_final.json").write_text(json.dumps(splits))
    assert split_cases(tmp_path, 1, "val") == ["b"] and split_cases(tmp_path, "0", "train") == ["b", "c"]
    assert cases_of_fold(splits, "all", "val") == ["a", "b", "c"] == cases_of_fold(splits, "all", "train")
    with pytest.raises(NnkdError, match="fold 2 is not in the dataset's splits_final.json"):
        split_cases(tmp_path, 2, "train")
    (tmp_path / "splits_final.json").write_text("{")
    with pytest.raises(NnkdError, match="not valid JSON"):
        read_splits(tmp_path)
