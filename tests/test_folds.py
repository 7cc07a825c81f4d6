"""nnkd.folds: the one reading of a model folder (plans, dataset.json, trained folds) and of nnU-Net's split."""

import json

import pytest

from nnkd.errors import NnkdError
from nnkd.folds import cases_of_fold, numbered_or_all, read_model_folder, read_splits, split_cases, trained_folds


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


def test_read_model_folder_reads_plans_and_dataset_json_or_names_what_is_missing(tmp_path):
    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir()
    (folder / "plans.json").write_text(json.dumps({"plans_name": "nnUNetPlans"}))
    with pytest.raises(NnkdError, match=r"dataset.json missing in teacher folder .*nnUNetPlans__3d_fullres"):
        read_model_folder(folder, "teacher folder")
    (folder / "dataset.json").write_text("{not json")
    with pytest.raises(NnkdError, match="dataset.json is not valid JSON"):
        read_model_folder(folder)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    assert read_model_folder(folder) == ({"plans_name": "nnUNetPlans"}, {"labels": {"background": 0}})


def test_raw_dataset_json_is_read_or_named_missing_on_one_line(tmp_path):
    from nnkd.nnunet_env import raw_dataset_json

    raw = tmp_path / "Dataset123_X"
    raw.mkdir()
    with pytest.raises(NnkdError, match=r"Dataset123_X has no dataset.json in .*put the raw dataset there"):
        raw_dataset_json(raw)
    (raw / "dataset.json").write_text('{"labels": {"background": 0, "organ": 1}}')
    assert raw_dataset_json(raw)["labels"]["organ"] == 1
