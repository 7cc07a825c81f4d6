"""nnkd_distill: plan → cache → train → validate → export for every fold of the teacher, resumable at every step,
one table at the end; bad input stops with one line before anything is written."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, QUICK_TRAINING, make_env, refuse_in_process, run_cli, training_env, tree_digest

DATASET = "Dataset991_Synthetic"


@pytest.fixture
def two_fold_setup(planned, teacher, tmp_path):
    """A private copy of the planned dataset without its student plans (nnkd_distill plans it) and a teacher with
    folds 0 and 1 (fold 1 a copy of the trained fold 0, validation summary included)."""
    env = training_env(make_env(tmp_path / "nnunet"), PYTHONUNBUFFERED="1")
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(Path(planned["env"][name]) / DATASET, Path(env[name]) / DATASET)
    preprocessed = Path(env["nnUNet_preprocessed"]) / DATASET
    (preprocessed / "nnKDPlans_tiny.json").unlink()
    for cache in preprocessed.glob("nnkd_teacher_cache*"):
        shutil.rmtree(cache)
    folder = tmp_path / "teacher" / teacher["folder"].name
    shutil.copytree(teacher["folder"], folder)
    shutil.copytree(folder / "fold_0", folder / "fold_1")
    return {"env": env, "spec": f"nnunet:{folder}", "teacher_folder": folder, "preprocessed": preprocessed}


def test_distill_runs_every_fold_resumes_after_the_cache_and_exports_one_model(two_fold_setup, tmp_path):
    env, spec = two_fold_setup["env"], two_fold_setup["spec"]
    out = tmp_path / "student"
    command = [str(BIN / "nnkd_distill"), "-d", "991", "--teacher", spec, "-o", str(out), *QUICK_TRAINING,
               "-np", "1"]
    log = tmp_path / "first.txt"
    with open(log, "w") as sink:  # interrupted once fold 0's teacher cache is complete
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "teacher cache complete" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the cache step did not finish in time"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    first = log.read_text()
    assert "Student plans (tiny)" in first  # planned by nnkd_distill
    assert not out.exists()

    result = run_cli("nnkd_distill", "-d", "991", "--teacher", spec, "-o", out, *QUICK_TRAINING, "-np", "1", env=env)
    text = result.stdout
    assert "skipping planning" in text
    assert text.count("nnkd: caching") == 2 and "for 0 of" in text.split("nnkd: caching")[1]  # fold 0 was cached
    assert "teacher Dice" in text and "seconds per case" in text and "parameters" in text
    record = json.loads((out / "distill.json").read_text())
    assert [row["fold"] for row in record["folds"]] == ["0", "1"]
    assert all(row["student_dice"] is not None and row["teacher_dice"] is not None for row in record["folds"])
    teacher, student = record["models"]["teacher"], record["models"]["student"]
    assert record["cached"] and record["teacher"] == spec and student["parameters"] < teacher["parameters"]
    assert teacher["seconds_per_case"] > 0 and student["seconds_per_case"] > 0
    assert (out / "plans.json").is_file() and (out / "fold_0" / "checkpoint_final.pth").is_file() \
        and (out / "fold_1" / "checkpoint_final.pth").is_file()

    (out / "notes.txt").write_text("the user's")  # files a user adds to OUT survive a rerun
    (out / "figures").mkdir()
    (out / "figures" / "dice.png").write_bytes(b"png")
    again = run_cli("nnkd_distill", "-d", "991", "--teacher", spec, "-o", out, *QUICK_TRAINING, "--no-timing",
                    env=env)  # everything done: nothing is retrained
    assert again.stdout.count("is trained and validated") == 2 and "Epoch" not in again.stdout
    assert (out / "notes.txt").read_text() == "the user's" and (out / "figures" / "dice.png").is_file()
    assert "distill.json" in json.loads((out / "nnkd_manifest.json").read_text())["files"]

    schedule = [*QUICK_TRAINING]
    schedule[schedule.index("--epochs") + 1] = "2"
    other = run_cli("nnkd_distill", "-d", "991", "--teacher", spec, "-o", tmp_path / "other", *schedule, "--no-timing",
                    env=env, check=False)  # the finished 1-epoch folds are not what --epochs 2 asks for
    assert other.returncode != 0 and "was started with --epochs 1, not 2" in other.stderr.strip().splitlines()[-1]
    assert "--run-name" in other.stderr and not (tmp_path / "other").exists()
    moved = run_cli("nnkd_distill", "-d", "991", "--teacher", spec, "-o", out, *schedule, "--no-timing", env=env,
                    check=False)  # nor may it replace OUT, the 1-epoch student
    assert moved.returncode != 0 and "holds the nnkd_distill output of another request" in moved.stderr


def _labels_differ(setup, tmp_path):
    from conftest import fake_teacher

    spec = fake_teacher(setup["teacher_folder"], tmp_path / "other",
                        edit_dataset=lambda d: d["labels"].update({"extra": 9}))
    return ["--teacher", spec, "-o", str(tmp_path / "out")]


def _unwritable(setup, tmp_path):
    (tmp_path / "a_file").write_text("")
    return ["--teacher", setup["spec"], "-o", str(tmp_path / "a_file" / "out")]


def _foreign_output(setup, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    return ["--teacher", setup["spec"], "-o", str(tmp_path / "mine")]


BAD = {
    "missing-fold": (lambda s, t: ["--teacher", s["spec"], "-o", str(t / "out"), "-f", "0", "3"],
                     "has neither fold 3 nor fold all"),
    "labels": (_labels_differ, "teacher labels"),
    "unwritable": (_unwritable, "cannot write to -o"),
    "foreign-output": (_foreign_output, "was not written by nnkd_distill"),
    "method": (lambda s, t: ["--teacher", s["spec"], "-o", str(t / "out"), "--method", "tskd"],
               "trains on a transfer set"),
}


def _lock_held(setup, tmp_path):
    """Another nnkd_distill (a live process) holds OUT's lock."""
    import socket

    holder = subprocess.Popen(["sleep", "60"])
    setup["holders"].append(holder)
    (tmp_path / ".out.nnkd-lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                          "command": "nnkd_distill", "since": "now"}))
    return ["--teacher", setup["spec"], "-o", str(tmp_path / "out")]


BAD["locked"] = (_lock_held, "is being written by nnkd_distill (pid")
BAD["search-and-budget"] = (lambda s, t: ["--teacher", s["spec"], "-o", str(t / "out"), "--max-dice-loss", "1",
                                          "--budget", "tiny"], "a budget was given too")
BAD["search-loss"] = (lambda s, t: ["--teacher", s["spec"], "-o", str(t / "out"), "--max-dice-loss", "nan"],
                      "is not a number of Dice points")
BAD["ladder-alone"] = (lambda s, t: ["--teacher", s["spec"], "-o", str(t / "out"), "--ladder", "1/4"],
                       "add --max-dice-loss")
def _no_test_labels(setup, tmp_path):
    shutil.rmtree(Path(setup["env"]["nnUNet_raw"]) / DATASET / "labelsTs")
    return ["--teacher", setup["spec"], "-o", str(tmp_path / "out"), "--test"]


BAD["test-without-labels"] = (_no_test_labels, "has no case in both")
BAD["teacher-folder-missing"] = (lambda s, t: ["--teacher", f"nnunet:{t}/nowhere", "-o", str(t / "out")],
                                 "teacher folder")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_stops_with_one_line_before_anything_is_written(two_fold_setup, tmp_path, case):
    make_args, message = BAD[case]
    two_fold_setup["holders"] = []
    args = make_args(two_fold_setup, tmp_path)
    roots = [Path(two_fold_setup["env"][n]) for n in ("nnUNet_preprocessed", "nnUNet_results")]
    before = [tree_digest(r) for r in roots]
    try:
        result = refuse_in_process("nnkd_distill", "-d", "991", *args, env=two_fold_setup["env"])
    finally:
        for holder in two_fold_setup["holders"]:
            holder.kill()
            holder.wait()
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if line.strip()][-1].startswith("nnkd: error:")
    assert [tree_digest(r) for r in roots] == before
    assert not (tmp_path / "out").exists()


def test_max_dice_loss_searches_the_ladder_and_distils_the_smallest_student_within_it(two_fold_setup, tmp_path):
    """Two candidates, 4 epochs: both train to the first rung (epoch 1, stopped with their latest checkpoint); then
    the smaller goes on alone (to the second rung, epoch 2, and the end) and is within D (D = 100 points admits
    any), so the larger is not trained on. The same command again resumes the finished search: it is accepted as
    the same request (the search's result in distill.json once hid the request it answered) and trains nothing."""
    out = tmp_path / "student"
    command = ["nnkd_distill", "-d", "991", "--teacher", two_fold_setup["spec"], "-o", out, "-f", "0",
               "--max-dice-loss", "100", "--ladder", "1/4,1/16", "--epochs", "4", "--iterations-per-epoch", "2",
               "--val-iterations-per-epoch", "1", "--device", "cpu", "-np", "1", "--no-timing", "--test"]
    result = run_cli(*command, env=two_fold_setup["env"])
    record = json.loads((out / "distill.json").read_text())
    search = record["search"]
    small, large = search["candidates"]
    assert small["parameters"] < large["parameters"] and search["chosen"] == small["budget"]
    assert (small["status"], small["epochs_trained"]) == ("within", 4) and small["dice"] is not None
    assert (large["status"], large["epochs_trained"]) == ("not needed", 1)
    assert record["plans"] == f"nnKDPlans_{small['budget']}" and record["search"]["objective"] == "params"
    assert record["search"]["cost_vs_chosen_alone"] > 1  # the larger candidate's rungs come on top
    assert "chosen: " + small["budget"] in result.stdout
    test = record["test"]  # --test: the choice and the teacher on the held-out imagesTs, against labelsTs
    raw = Path(two_fold_setup["env"]["nnUNet_raw"]) / DATASET
    assert test["cases"] == sorted(p.name[:-len(".nii.gz")] for p in (raw / "labelsTs").glob("*.nii.gz"))
    assert 0 <= test["student_dice"] <= 1 and 0 <= test["teacher_dice"] <= 1
    assert set(test["teacher_dice_per_class"]) == set(test["student_dice_per_class"]) == {"1", "2", "3"}
    assert "test" in result.stdout.split("chosen: ")[1] and "case(s) of imagesTs, folds 0" in result.stdout
    results = Path(two_fold_setup["env"]["nnUNet_results"]) / DATASET
    stopped = next(results.glob(f"*__nnKDPlans_{large['budget']}__3d_fullres")) / "fold_0"
    assert (stopped / "checkpoint_latest.pth").is_file() and not (stopped / "checkpoint_final.pth").exists()
    log = "".join(p.read_text() for p in stopped.glob("training_log_*.txt"))
    assert "stopping after epoch 1 of 4" in log and "stopping after epoch 2 of 4" not in log
    chosen = next(results.glob(f"*__nnKDPlans_{small['budget']}__3d_fullres")) / "fold_0"
    assert "stopping after epoch 2 of 4" in "".join(p.read_text() for p in chosen.glob("training_log_*.txt"))
    assert record["search_request"] == {"max_dice_loss": 100.0, "objective": "params", "ladder": [4, 16]}
    logs = set(results.rglob("training_log_*.txt"))
    again = run_cli(*command, env=two_fold_setup["env"])
    assert "chosen: " + small["budget"] in again.stdout
    # nothing trained again: a stopped candidate is reopened at its rung and stops there, before any epoch
    assert not [p for p in set(results.rglob("training_log_*.txt")) - logs if re.search(r": Epoch \d+", p.read_text())]
    assert json.loads((out / "distill.json").read_text())["search"]["chosen"] == small["budget"]
    assert json.loads((out / "plans.json").read_text())["plans_name"].startswith(f"nnKDPlans_{small['budget']}-")
