"""--labeled N: the low-label regime is one flag, the same cases for every method of a fold."""

import json
from pathlib import Path

from conftest import PLANNED_ID, QUICK_TRAINING, run_cli, run_fold, training_env, refuse_in_process
from nnkd.trainers.labeled import choose_labeled_cases


def test_the_choice_is_seeded_by_fold_sorted_and_nested_in_the_fold():
    cases = [f"case_{i:03d}" for i in range(10)]
    chosen = choose_labeled_cases(list(reversed(cases)), 4, 0)
    assert chosen == sorted(chosen) and len(set(chosen)) == 4 and set(chosen) <= set(cases)
    assert chosen == choose_labeled_cases(cases, 4, 0)
    assert chosen != choose_labeled_cases(cases, 4, 1)


def test_labeled_2_trains_on_two_cases_and_records_them(planned, tmp_path):
    env = training_env({**planned["env"], "nnUNet_results": str(tmp_path / "results")})
    run_cli("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "none", "--labeled", "2",
            *QUICK_TRAINING, env=env)
    fold = run_fold(tmp_path / "results" / "Dataset991_Synthetic", "nnKDTrainer_NoKD")
    record = json.loads((fold / "labeled_cases.json").read_text())
    splits = json.loads((Path(env["nnUNet_preprocessed"]) / "Dataset991_Synthetic" / "splits_final.json").read_text())
    assert record["labeled"] == 2 and len(record["cases"]) == 2 and set(record["cases"]) <= set(splits[0]["train"])
    assert json.loads((fold / "teacher.json").read_text())["labeled"] == 2
    validation = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(validation["metric_per_case"]) == len(splits[0]["val"])  # validation cases are not reduced
    refused = refuse_in_process("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "none",
                                "--labeled", "0", *QUICK_TRAINING, env=env)
    assert refused.returncode != 0 and "keeps no labelled case" in refused.stderr
