"""Reliability: one `nnkd: error: <what is wrong> — <what to do>` line for bad input in every console script,
writes that a kill cannot leave half-done, a killed training that resumes, checkpoints that never run code, and
an nnUNet_raw that no command writes.

The rest of the error catalogue (docs/troubleshooting.md) is tested beside the feature it guards:
test_errors.py (planning, nnUNet_* variables), test_training_errors.py (nnkd_train: methods, teachers, checkpoints,
plans, resume), test_deploy.py (nnkd_predict, nnkd_export), test_synthetic.py, test_teacher_cache.py and the
test_teachers*.py files (each teacher family's options and files)."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import (BIN, PLANNED_ID, error_line, QUICK_TRAINING, run_cli, selected_params, tree_digest,
                      refuse_all_in_process)
from nnkd.run_names import derived_run_name, run_trainer_name
from nnkd.checkpoints import load_checkpoint

DATASET = "Dataset991_Synthetic"
TRAIN = [str(PLANNED_ID), "3d_fullres", "0", "--budget", "tiny"]
STUDENT = ["-d", str(PLANNED_ID), "-c", "3d_fullres", "--budget", "tiny", "-f", "0"]
CACHE = ["-d", str(PLANNED_ID), "-c", "3d_fullres", "-f", "0", "--device", "cpu"]
FAST = ["-device", "cpu", "-npp", "1", "-nps", "1"]


def _images(env: dict) -> Path:
    return Path(env["nnUNet_raw"]) / DATASET / "imagesTs"


class _FeaturesOnly(nn.Module):
    """A scripted 3D encoder without labelled outputs: a teacher with stage features but no logits."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(1, 4, 3, stride=2, padding=1)
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x):
        return self.head(self.stem(x))


def _features_only_teacher(tmp: Path) -> str:
    path = tmp / "encoder.pt"
    torch.jit.save(torch.jit.script(_FeaturesOnly().eval()), str(path))
    return f"torchscript:{path}?features=stem&probe=16"


def _without(env: dict, name: str) -> dict:
    return {k: v for k, v in env.items() if k != name}


def _corrupt_run_record(env: dict, tmp: Path) -> dict:
    results = tmp / "results"
    fold = results / DATASET / "nnKDTrainer_NoKD__nnKDPlans_tiny__3d_fullres" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").write_bytes(b"")
    (fold / "teacher.json").write_text('{"method": "none", "trai')  # cut off mid-write by another tool
    return {**env, "nnUNet_results": str(results)}


# (command, arguments, environment change, fragment of the error line); "{t}" is the session teacher's spec,
# "{tmp}" this test's folder, "{img}" the dataset's imagesTs, "{student}" the trained logit student's model folder.
CATALOGUE = {
    "train-3d-teacher-2d-configuration": (
        "nnkd_train", [str(PLANNED_ID), "2d", "0", "--budget", "tiny", "--method", "logit", "--teacher", "{t}"],
        None, "the teacher is 3D, configuration 2d is 2D"),
    "train-results-unset": (
        "nnkd_train", [*TRAIN, "--method", "none"], lambda env, tmp: _without(env, "nnUNet_results"),
        "nnUNet_results is not set"),
    "train-teacher-cache-without-cache": (
        "nnkd_train", [*TRAIN, "--method", "logit", "--teacher", "{t}?fold=0", "--teacher-cache"], None,
        "no teacher cache of"),
    "train-teacher-cache-without-teacher": (
        "nnkd_train", [*TRAIN, "--method", "logit", "--teacher-cache"], None, "--teacher-cache needs --teacher"),
    "train-corrupt-run-record": (
        "nnkd_train", [*TRAIN, "--method", "none", "--c"], _corrupt_run_record, "teacher.json is corrupt"),
    "train-bad-epochs": ("nnkd_train", [*TRAIN, "--method", "none", "--epochs", "0"], None, "must be at least 1"),
    "train-bad-validation-mirroring": (
        "nnkd_train", [*TRAIN, "--method", "none", "--run-name", "mirroring"],
        lambda env, tmp: {**env, "nnkd_val_mirroring": "no"}, "nnkd_val_mirroring=no is not 0 or 1"),
    "predict-results-unset": (
        "nnkd_predict", ["-i", "{img}", "-o", "{tmp}/out", *STUDENT, "--method", "logit"],
        lambda env, tmp: _without(env, "nnUNet_results"), "nnUNet_results is not set"),
    "predict-output-is-a-file": (
        "nnkd_predict", ["-i", "{img}", "-o", "{tmp}/file.txt", *STUDENT, "--method", "logit"], None,
        "output folder {tmp}/file.txt is a file"),
    "predict-missing-input-folder": (
        "nnkd_predict", ["-i", "{tmp}/nowhere", "-o", "{tmp}/out", *STUDENT, "--method", "logit"], None,
        "input folder {tmp}/nowhere not found"),
    "predict-missing-onnx": (
        "nnkd_predict", ["-i", "{img}", "-o", "{tmp}/out", *STUDENT, "--method", "logit", "--onnx",
                         "{tmp}/student.onnx"], None, "ONNX file {tmp}/student.onnx not found"),
    "predict-step-size": (
        "nnkd_predict", ["-i", "{img}", "-o", "{tmp}/out", *STUDENT, "--method", "logit", "-step_size", "2"], None,
        "-step_size 2.0 is out of range"),
    "export-results-unset": (
        "nnkd_export", [*STUDENT, "--method", "logit", "-o", "{tmp}/model"],
        lambda env, tmp: _without(env, "nnUNet_results"), "nnUNet_results is not set"),
    "export-unknown-dataset": (
        "nnkd_export", ["-d", "555", "-c", "3d_fullres", "--budget", "tiny", "--method", "logit", "-o", "{tmp}/m"],
        None, "dataset 555 not found"),
    "export-missing-fold": (
        "nnkd_export", [*STUDENT[:-2], "-f", "3", "--method", "logit", "-o", "{tmp}/model"], None,
        "fold 3 of nnKDTrainer_Logit@nnunet"),
    "export-into-the-student": (
        "nnkd_export", [*STUDENT, "--method", "logit", "-o", "{student}", "--overwrite"], None,
        "or holds the trained student's folder"),
    "export-output-is-a-file": (
        "nnkd_export", [*STUDENT, "--method", "logit", "-o", "{tmp}/file.txt"], None, "file.txt is a file"),
    "teachers-describe-missing-file": (
        "nnkd_teachers", ["describe", "torchscript:{tmp}/missing.pt"], None,
        "TorchScript model {tmp}/missing.pt not found"),
    "teachers-describe-missing-folder": (
        "nnkd_teachers", ["describe", "nnunet:{tmp}/no_model"], None, "teacher folder {tmp}/no_model not found"),
    "teachers-describe-without-spec": ("nnkd_teachers", ["describe"], None, "describe needs a teacher spec"),
    "teachers-unknown-family": ("nnkd_teachers", ["describe", "vit:/x.pth"], None, "unknown teacher family 'vit'"),
    "cache-unknown-dataset": ("nnkd_cache_teacher", ["-d", "555", *CACHE[2:], "--teacher", "{t}"], None,
                              "dataset 555 not found"),
    "cache-unknown-configuration": (
        "nnkd_cache_teacher", [*CACHE[:2], "-c", "3d_lowres", *CACHE[4:], "--teacher", "{t}"], None,
        "unknown configuration '3d_lowres'"),
    "cache-preprocessed-unset": (
        "nnkd_cache_teacher", [*CACHE, "--teacher", "{t}"], lambda env, tmp: _without(env, "nnUNet_preprocessed"),
        "nnUNet_preprocessed is not set"),
    "cache-step-size": ("nnkd_cache_teacher", [*CACHE, "--teacher", "{t}", "-step_size", "0"], None,
                        "-step_size 0.0 is out of range"),
    "cache-teacher-without-logits": (
        "nnkd_cache_teacher", [*CACHE, "--teacher", "{features_only}"], None, "needs teacher logits"),
    "cache-bad-teacher-option": (
        "nnkd_cache_teacher", [*CACHE, "--teacher", "{t}?fold=0&colour=red"], None,
        "unknown option(s) colour for nnunet teacher"),
    "cache-missing-fold": ("nnkd_cache_teacher", [*CACHE[:4], "-f", "7", *CACHE[6:], "--teacher", "{t}?fold=0"],
                           None, "fold 7 is not in"),
}


def _catalogue_call(case: str, trained: dict, teacher: dict, tmp: Path) -> tuple[tuple, str]:
    """The case's (command, arguments, environment) and the fragment its error line must hold."""
    command, args, edit_env, fragment = CATALOGUE[case]
    env = teacher["env"]
    (tmp / "file.txt").write_text("not a folder\n")
    values = {"{t}": teacher["spec"], "{tmp}": str(tmp), "{img}": str(_images(env)),
              "{student}": str(trained["logit"][0].parent)}
    if "{features_only}" in str(args):
        values["{features_only}"] = _features_only_teacher(tmp)

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    return (command, [fill(a) for a in args], edit_env(env, tmp) if edit_env else env), fill(fragment)


@pytest.fixture(scope="module")
def refusals(request, trained, teacher, tmp_path_factory):
    """The commands of every collected case of the refusal tests below, each in a folder of its own, run in this
    process (refuse_all_in_process) before any is checked; the session's nnUNet_results is digested before and
    after them all. Returns (test, case) -> (result, folder, fragment) and both digests."""
    cases = {}
    for case in selected_params(request, "test_bad_input_gives_one_error_line", "case"):
        tmp = tmp_path_factory.mktemp(case)
        cases["catalogue", case] = (tmp, *_catalogue_call(case, trained, teacher, tmp))
    for command in selected_params(request, "test_a_checkpoint_carrying_code_is_refused_and_never_run", "command"):
        tmp = tmp_path_factory.mktemp(f"code-{command}")
        cases["code", command] = (tmp, _code_call(command, trained, teacher, tmp), None)
    for damage in selected_params(request, "test_resume_refuses_a_hostile_or_truncated_checkpoint", "damage"):
        tmp = tmp_path_factory.mktemp(f"resume-{damage}")
        cases["resume", damage] = (tmp, _resume_call(damage, trained, teacher, tmp), None)
    if selected_params(request, "test_verbose_adds_the_traceback_to_the_error_line"):
        cases["verbose", None] = (None, ("nnkd_train", [*TRAIN, "--method", "distil", "--verbose"], teacher["env"]),
                                  None)
    results = Path(teacher["env"]["nnUNet_results"])
    before = tree_digest(results)
    outputs = refuse_all_in_process([call for _, call, _ in cases.values()])
    return {"runs": {key: (output, tmp, fragment) for (key, (tmp, _, fragment)), output in zip(cases.items(), outputs)},
            "results_before": before, "results_after": tree_digest(results)}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_gives_one_error_line(case, refusals):
    result, tmp, fragment = refusals["runs"]["catalogue", case]
    assert fragment in error_line(result)
    assert refusals["results_after"] == refusals["results_before"]  # a refused command writes nothing
    assert not (tmp / "out").exists() and not (tmp / "model").exists()


def test_verbose_adds_the_traceback_to_the_error_line(refusals):
    result, _, _ = refusals["runs"]["verbose", None]
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("nnkd: error: unknown method 'distil'")


# ------------------------------------------------------------------------------------- checkpoints never run code
class _RunsCode:
    """What a hostile checkpoint carries: unpickling it calls os.system (here: touch a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _plant_code(checkpoint: Path, marker: Path) -> None:
    """Re-save a real checkpoint with pickled code beside its weights."""
    state = load_checkpoint(checkpoint)
    state["payload"] = _RunsCode(marker)
    torch.save(state, checkpoint)


def test_the_planted_code_runs_when_loaded_unsafely(teacher, tmp_path):
    """The control: torch.load(weights_only=False) on such a file does run the code."""
    checkpoint = tmp_path / "checkpoint.pth"
    shutil.copy(teacher["folder"] / "fold_0" / "checkpoint_final.pth", checkpoint)
    _plant_code(checkpoint, tmp_path / "control")
    torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert (tmp_path / "control").exists()


def _hostile_teacher(teacher: dict, tmp: Path, marker: Path) -> str:
    copy = tmp / teacher["folder"].name
    shutil.copytree(teacher["folder"], copy)
    _plant_code(copy / "fold_0" / "checkpoint_final.pth", marker)
    return f"nnunet:{copy}?fold=0"


def _hostile_student(trained: dict, tmp: Path, marker: Path) -> Path:
    """A private nnUNet_results holding a copy of the trained logit student whose fold 0 carries code."""
    model = trained["logit"][0].parent
    copy = tmp / "results" / DATASET / model.name
    shutil.copytree(model, copy)
    _plant_code(copy / "fold_0" / "checkpoint_final.pth", marker)
    return tmp / "results"


def _code_call(command: str, trained: dict, teacher: dict, tmp: Path) -> tuple:
    """`command` given a checkpoint that carries code (marker: tmp/code_ran)."""
    marker = tmp / "code_ran"
    env = teacher["env"]
    if command in ("nnkd_predict", "nnkd_export"):
        env = {**env, "nnUNet_results": str(_hostile_student(trained, tmp, marker))}
        args = {"nnkd_predict": ["-i", _images(env), "-o", tmp / "out", *STUDENT, "--method", "logit", *FAST],
                "nnkd_export": [*STUDENT, "--method", "logit", "-o", tmp / "model"]}[command]
    else:
        spec = _hostile_teacher(teacher, tmp, marker)
        args = {"nnkd_train": [*TRAIN, "--method", "logit", "--teacher", spec, *QUICK_TRAINING],
                "nnkd_cache_teacher": [*CACHE, "--teacher", spec],
                "nnkd_teachers": ["describe", spec]}[command]
    return command, args, env


@pytest.mark.parametrize("command", ["nnkd_train", "nnkd_cache_teacher", "nnkd_teachers", "nnkd_predict",
                                     "nnkd_export"])
def test_a_checkpoint_carrying_code_is_refused_and_never_run(command, refusals):
    result, tmp, _ = refusals["runs"]["code", command]
    line = error_line(result)
    assert "cannot load checkpoint" in line and "Unsupported global: GLOBAL posix.system" in line, line
    assert not (tmp / "code_ran").exists()
    assert not (tmp / "out").exists() and not (tmp / "model").exists()


def _resume_call(damage: str, trained: dict, teacher: dict, tmp: Path) -> tuple:
    """--c on a copy of the no-KD student whose checkpoint_latest.pth carries code or is cut short."""
    model = trained["none"][0].parent
    copy = tmp / "results" / DATASET / model.name
    shutil.copytree(model, copy)
    latest = copy / "fold_0" / "checkpoint_latest.pth"
    os.rename(copy / "fold_0" / "checkpoint_final.pth", latest)  # as if killed before the last epoch ended
    if damage == "code":
        _plant_code(latest, tmp / "code_ran")
    else:
        latest.write_bytes(latest.read_bytes()[:5000])
    env = {**teacher["env"], "nnUNet_results": str(tmp / "results")}
    return "nnkd_train", [*TRAIN, "--method", "none", "--c", "--device", "cpu"], env


@pytest.mark.parametrize("damage", ["code", "truncated"])
def test_resume_refuses_a_hostile_or_truncated_checkpoint(damage, refusals):
    result, tmp, _ = refusals["runs"]["resume", damage]
    assert not (tmp / "code_ran").exists()
    assert "cannot load checkpoint" in error_line(result)


# -------------------------------------------------------------------------- a kill during training, then --c
def _epochs_started(log: str) -> list[int]:
    return [int(n) for n in re.findall(r": Epoch (\d+) *$", log, flags=re.MULTILINE)]


def test_a_training_killed_mid_epoch_resumes_from_its_last_epoch(teacher, tmp_path):
    """SIGKILL in the middle of the second epoch (feature KD, so projectors and their optimizer state exist),
    then --c: training goes on from checkpoint_latest.pth, written after every epoch, and ends complete."""
    env = {**teacher["env"], "nnUNet_results": str(tmp_path / "results")}
    epochs = 3
    run = run_trainer_name("nnKDTrainer_Feature", derived_run_name([teacher["spec"]]))  # resumed below without it
    fold = tmp_path / "results" / DATASET / f"{run}__nnKDPlans_tiny__3d_fullres" / "fold_0"
    start = [str(BIN / "nnkd_train"), *TRAIN, "--method", "feature", "--teacher", teacher["spec"], "--epochs",
             str(epochs), "--iterations-per-epoch", "4", "--val-iterations-per-epoch", "1", "--device", "cpu"]
    with open(tmp_path / "first_run.txt", "w") as output:
        process = subprocess.Popen(start, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while not (fold / "checkpoint_latest.pth").is_file() or 1 not in _epochs_started(
                "".join(p.read_text() for p in fold.glob("training_log_*.txt"))):
            assert process.poll() is None, (tmp_path / "first_run.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.1)
        time.sleep(0.5)  # into the next epoch's training iterations
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (fold / "checkpoint_final.pth").exists()
    started = max(_epochs_started("".join(p.read_text() for p in fold.glob("training_log_*.txt"))))
    saved = load_checkpoint(fold / "checkpoint_latest.pth")  # whole, never half-written
    assert saved["current_epoch"] >= started  # at most the epoch that was running is lost
    assert saved["nnkd"]["helpers"] is not None
    record = (fold / "teacher.json").read_bytes()
    logs_before = set(fold.glob("training_log_*.txt"))

    result = run_cli("nnkd_train", *TRAIN, "--method", "feature", "--c", "--device", "cpu", env=env)
    assert "validation Dice" in result.stdout
    final = load_checkpoint(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == epochs and not (fold / "checkpoint_latest.pth").exists()
    assert (fold / "teacher.json").read_bytes() == record
    helpers = final["nnkd"]["helpers"]
    assert helpers is not None and helpers.keys() == saved["nnkd"]["helpers"].keys()
    assert len(final["optimizer_state"]["param_groups"]) == 2  # student + projectors, restored together
    assert [len(v) for v in final["nnkd"]["kd_log"].values()] == [epochs, epochs]
    resumed_log = "".join(p.read_text() for p in set(fold.glob("training_log_*.txt")) - logs_before)
    assert _epochs_started(resumed_log) == list(range(saved["current_epoch"], epochs))


# ----------------------------------------------------------------------------------------------- atomic writes
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from nnkd import atomic

    path = tmp_path / "plans.json"
    atomic.write_json_atomic(path, {"version": 1})

    def killed(*_):
        raise KeyboardInterrupt  # stands in for a kill between writing the data and renaming it

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_json_atomic(path, {"version": 2})
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["plans.json"]


def test_a_replaced_folder_is_swapped_whole(tmp_path):
    from nnkd.atomic import replace_folder

    (tmp_path / "model" / "fold_0").mkdir(parents=True)
    (tmp_path / "model" / "old.txt").write_text("old")
    (tmp_path / ".model.tmp" / "fold_0").mkdir(parents=True)
    (tmp_path / ".model.tmp" / "new.txt").write_text("new")
    replace_folder(tmp_path / ".model.tmp", tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["fold_0", "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# ------------------------------------------------------------------------------------- nnUNet_raw is read-only
def test_plan_train_predict_export_never_write_nnunet_raw(planned, trained, deployed_student):
    """`planned` took the digest before planning; `trained` trained three students; `deployed_student` (conftest)
    predicted imagesTs, exported the logit student (zip + ONNX) and predicted with stock nnU-Net from the export."""
    root = deployed_student["root"]
    assert (root / "model.zip").is_file() and any((root / "nnkd").glob("*.nii.gz"))
    assert tree_digest(Path(planned["env"]["nnUNet_raw"])) == planned["raw_before"]


def test_checkpoints_load_from_several_threads_at_once(tmp_path):
    """nnkd_benchmark --jobs reads run checkpoints from parallel threads; torch's allowance for the numpy scalars
    in nnU-Net's training log is one process-wide list, so one thread's load must not end another's allowance."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    path = tmp_path / "checkpoint.pth"
    torch.save({"network_weights": {"w": torch.ones(2)}, "_best_ema": np.float64(0.5),
                "logging": {"ema_fg_dice": [np.float64(0.25)]}}, path)

    def load_many(_):
        return [load_checkpoint(path)["_best_ema"] for _ in range(40)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        loaded = [v for values in pool.map(load_many, range(8)) for v in values]
    assert loaded == [0.5] * 320
