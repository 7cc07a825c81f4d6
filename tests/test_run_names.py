"""Runs never collide: a run's folder name carries what makes it different (teacher, cached or online, --labeled,
--hp, --seed) or the --run-name given; nnU-Net's own run_training files and finds it there."""

import os
from pathlib import Path

import pytest

from conftest import PLANNED_ID, QUICK_TRAINING, run_cli, training_env, refuse_in_process
from nnkd.run_names import derived_run_name, run_name_problem, split_run_trainer_name, trainer_run_folders


def test_the_derived_name_changes_with_every_setting_that_makes_a_run_different(tmp_path):
    base = derived_run_name(["nnunet:/models/T"])
    variants = [derived_run_name(["nnunet:/models/U"]), derived_run_name(["nnunet:/models/T"], cached=True),
                derived_run_name(["nnunet:/models/T"], labeled=4),
                derived_run_name(["nnunet:/models/T"], hyperparameters={"kd_temperature": 4.0}),
                derived_run_name(["nnunet:/models/T"], hyperparameters={"kd_temperature": 2.0}),
                derived_run_name(["nnunet:/models/T"], seed=1), derived_run_name(["nnunet:/models/T"], transfer=["/u"])]
    assert len({base, *variants}) == 1 + len(variants)
    assert all(run_name_problem(name) is None for name in [base, *variants])
    assert base.startswith("nnunet") and derived_run_name([]) is None  # the unseeded baseline keeps nnU-Net's name
    assert derived_run_name([], hyperparameters={"kd_weight": 2.0}, seed=0) == "kd_weight=2-s0"
    os.chdir(tmp_path)  # a relative and an absolute path to one teacher are one teacher
    assert derived_run_name(["nnunet:models/T"]) == derived_run_name([f"nnunet:{tmp_path / 'models' / 'T'}"])
    long = derived_run_name(["deepbet"], hyperparameters={f"name_{i}": 1.0 for i in range(20)})
    assert run_name_problem(long) is None and "-hp" in long


@pytest.mark.parametrize("name", ["", "a/b", "a__b", "-x", "x" * 101, "a b"])
def test_a_run_name_that_cannot_name_a_folder_is_refused(name):
    assert run_name_problem(name) is not None


def test_two_runs_that_differ_in_hp_both_survive_and_are_found_by_name(teacher, tmp_path):
    env = training_env({**teacher["env"], "nnUNet_results": str(tmp_path / "results")})
    student = [PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "logit", "--teacher", teacher["spec"]]
    for temperature in ("1", "4"):
        run_cli("nnkd_train", *student, "--hp", f"kd_temperature={temperature}", *QUICK_TRAINING, env=env)
    runs = trainer_run_folders(tmp_path / "results" / "Dataset991_Synthetic", "nnKDTrainer_Logit", "nnKDPlans_tiny",
                               "3d_fullres")
    names = [split_run_trainer_name(r.name.split("__")[0])[1] for r in runs]
    assert len(runs) == 2 and all((r / "fold_0" / "checkpoint_final.pth").is_file() for r in runs)
    assert sorted(n.rsplit("=", 1)[1] for n in names) == ["1", "4"]

    again = refuse_in_process("nnkd_train", *student, "--hp", "kd_temperature=4", *QUICK_TRAINING, env=env)
    assert again.returncode != 0 and "already has checkpoints" in again.stderr  # never overwritten
    resumed = refuse_in_process("nnkd_train", *student[:7], "--val", "--device", "cpu", env=env)
    assert resumed.returncode != 0 and "several runs of nnKDTrainer_Logit" in resumed.stderr
    assert all(n in resumed.stderr for n in names)

    exported = [PLANNED_ID, "3d_fullres", "--budget", "tiny", "--method", "logit"]
    ambiguous = refuse_in_process("nnkd_export", "-d", *exported[:1], "-c", *exported[1:], "-o", tmp_path / "x",
                                  env=env)
    assert ambiguous.returncode != 0 and "several trained students match" in ambiguous.stderr
    run_cli("nnkd_export", "-d", PLANNED_ID, "-c", "3d_fullres", "--budget", "tiny", "--method", "logit",
            "--run-name", names[0], "-o", tmp_path / "model", env=env)
    plans = next(Path(tmp_path / "model").glob("plans.json")).read_text()
    assert names[0] in plans  # the exported plans name carries the run, so both install side by side
    validated = run_cli("nnkd_train", *student[:7], "--run-name", names[1], "--val", "--device", "cpu", env=env)
    assert "validation Dice" in validated.stdout
