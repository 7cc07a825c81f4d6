"""What nnkd guards (docs/troubleshooting.md, "What nnkd guards"): no command writes into nnU-Net's folders, a
trained model or its input; `--overwrite` and reruns replace only what nnkd wrote (its manifest); a lock keeps two
commands out of one folder; numbers are checked before anything is written; JSON keeps the umask's permissions."""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (PLANNED_ID, error_line, QUICK_TRAINING, run_cli, selected_params, tree_digest,
                      refuse_all_in_process, refuse_in_process)
from nnkd.errors import NnkdError
from nnkd.outputs import (MANIFEST, OutputLock, carry_foreign, check_output, check_replaceable, check_sibling,
                          write_manifest)

DATASET = "Dataset991_Synthetic"
STUDENT = ["-d", str(PLANNED_ID), "-c", "3d_fullres", "--budget", "tiny", "-f", "0", "--method", "logit"]
FAST = ["-device", "cpu", "-npp", "1", "-nps", "1"]


# ----------------------------------------------------------------------------- the output guard, as a function
@pytest.fixture
def layout(tmp_path, monkeypatch) -> dict:
    """nnU-Net's three folders with a raw dataset, a preprocessed one and a trained model folder, plus an input
    folder of images; the nnUNet_* variables point at them."""
    roots = {}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        roots[name] = tmp_path / name
        roots[name].mkdir()
        monkeypatch.setenv(name, str(roots[name]))
    raw = roots["nnUNet_raw"] / "Dataset990_X"
    (raw / "labelsTs").mkdir(parents=True)
    (raw / "labelsTs" / "case_0.nii.gz").write_bytes(b"truth")
    (roots["nnUNet_preprocessed"] / "Dataset990_X").mkdir()
    (roots["nnUNet_preprocessed"] / "Dataset990_X" / "nnUNetPlans.json").write_text("{}")
    model = roots["nnUNet_results"] / "Dataset990_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        (model / name).write_text("{}")
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
    images = tmp_path / "images"
    images.mkdir()
    (images / "case_0_0000.nii.gz").write_bytes(b"image")
    return {"tmp": tmp_path, **roots, "raw_dataset": raw, "model": model, "images": images}


REFUSED = {  # -o (relative to the layout), fragment of the refusal; for a command that replaces its output
    "raw": ("nnUNet_raw", "is inside nnUNet_raw"),
    "raw-dataset": ("nnUNet_raw/Dataset990_X", "is inside nnUNet_raw"),
    "raw-labels": ("nnUNet_raw/Dataset990_X/labelsTs", "is inside nnUNet_raw"),
    "raw-new-folder": ("nnUNet_raw/Dataset990_X/predictions", "is inside nnUNet_raw"),
    "preprocessed": ("nnUNet_preprocessed/Dataset990_X", "is inside nnUNet_preprocessed"),
    "model-folder": ("nnUNet_results/Dataset990_X/nnUNetTrainer__nnUNetPlans__3d_fullres",
                     "is the trained model folder"),
    "model-fold": ("nnUNet_results/Dataset990_X/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0",
                   "is inside the trained model folder"),
    "results-dataset": ("nnUNet_results/Dataset990_X", "was not written by nnkd_export"),
    "holds-nnunet-folders": (".", "holds nnUNet_"),
    "input": ("images", "is (inside) the input"),
    "inside-input": ("images/out", "is (inside) the input"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_output_guard_refuses(case, layout):
    target, fragment = REFUSED[case]
    with pytest.raises(NnkdError) as refused:
        check_output(layout["tmp"] / target, "nnkd_export", inputs=[layout["images"]])
    assert fragment in str(refused.value) and refused.value.remedy


def test_the_output_guard_refuses_a_folder_holding_the_input(layout):
    nested = layout["tmp"] / "work" / "images"
    nested.mkdir(parents=True)
    with pytest.raises(NnkdError, match="holds the input"):
        check_output(layout["tmp"] / "work", "nnkd_predict", inputs=[nested], replaces=False)


def test_a_foreign_folder_is_refused_even_with_overwrite_and_a_new_or_own_one_allowed(layout):
    foreign = layout["tmp"] / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(NnkdError, match="was not written by nnkd_export"):
        check_output(foreign, "nnkd_export", overwrite=True)
    assert check_output(foreign, "nnkd_predict", replaces=False) == foreign  # predict adds files beside them
    assert check_output(layout["tmp"] / "new" / "out", "nnkd_export") == layout["tmp"] / "new" / "out"
    own = layout["tmp"] / "exported"
    own.mkdir()
    (own / "plans.json").write_text("{}")
    write_manifest(own, "nnkd_export", ["plans.json"])
    with pytest.raises(NnkdError, match="pass --overwrite"):
        check_output(own, "nnkd_export", overwrite=False)
    with pytest.raises(NnkdError, match="holds the output of nnkd_export"):
        check_output(own, "nnkd_distill")
    assert check_output(own, "nnkd_export", overwrite=True) == own
    assert not list(layout["tmp"].glob("new"))  # checking wrote nothing


def test_predict_replaces_only_its_own_files(layout):
    out = layout["tmp"] / "predictions"
    out.mkdir()
    (out / "case_0.nii.gz").write_bytes(b"the user's")
    with pytest.raises(NnkdError, match="already holds case_0.nii.gz, which nnkd_predict did not write"):
        check_replaceable(out, ["case_0.nii.gz", "case_1.nii.gz"], "nnkd_predict")
    write_manifest(out, "nnkd_predict", ["case_0.nii.gz"])
    check_replaceable(out, ["case_0.nii.gz", "case_1.nii.gz"], "nnkd_predict")


def test_an_existing_zip_must_be_nnkds(layout):
    out = layout["tmp"] / "model"
    (layout["tmp"] / "model.zip").mkdir()
    with pytest.raises(NnkdError, match="exists and is not a file"):
        check_sibling(layout["tmp"] / "model.zip", out, "--zip's archive")
    (layout["tmp"] / "model.zip").rmdir()
    (layout["tmp"] / "model.zip").write_bytes(b"someone's archive")
    with pytest.raises(NnkdError, match="was not written by nnkd"):
        check_sibling(layout["tmp"] / "model.zip", out, "--zip's archive")
    out.mkdir()
    write_manifest(out, "nnkd_export", ["../model.zip"])
    check_sibling(layout["tmp"] / "model.zip", out, "--zip's archive")


def test_carry_foreign_keeps_what_the_user_added(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        (folder / "fold_0").mkdir(parents=True)
        (folder / "plans.json").write_text(folder.name)
        (folder / "fold_0" / "checkpoint_final.pth").write_text(folder.name)
    (old / "notes.txt").write_text("mine")
    (old / "fold_0" / "my_eval.csv").write_text("mine")
    (old / "figures").mkdir()
    (old / "figures" / "a.png").write_text("mine")
    own = {"plans.json", "fold_0/checkpoint_final.pth", MANIFEST}
    moved = carry_foreign(old, new, own)
    assert sorted(moved) == ["figures", "fold_0/my_eval.csv", "notes.txt"]
    assert (new / "notes.txt").read_text() == "mine" and (new / "figures" / "a.png").read_text() == "mine"
    assert (new / "plans.json").read_text() == "new" and (new / "fold_0" / "my_eval.csv").is_file()


# ---------------------------------------------------------------------------------------------------- the lock
def test_a_second_holder_is_refused_naming_the_first_and_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(["sleep", "30"])
    try:
        lock = OutputLock(out, "nnkd_distill")
        lock.path.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "command": "nnkd_distill",
                                         "since": "now"}))
        with pytest.raises(NnkdError) as refused:
            OutputLock(out, "nnkd_export").acquire()
        assert f"is being written by nnkd_distill (pid {holder.pid}" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(out, "nnkd_export") as taken:  # the holder is dead: its lock is stale
        assert json.loads(taken.path.read_text())["pid"] == os.getpid()
        with OutputLock(out, "nnkd_export"):  # re-entrant in one process (distill exports into its own OUT)
            pass
        assert taken.path.exists()
    assert not taken.path.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lock_on_another_host_is_taken_over_only_once_its_heartbeat_stopped(tmp_path, capsys):
    """Another host's pid cannot be checked: its lock is live while touched (every HEARTBEAT_SECONDS by the
    holder), stale once untouched for STALE_AFTER_SECONDS."""
    from nnkd import outputs

    lock = OutputLock(tmp_path / "out", "nnkd_distill")
    lock.path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "nnkd_distill", "since": "now"}))
    with pytest.raises(NnkdError, match="on elsewhere") as refused:
        OutputLock(tmp_path / "out", "nnkd_export").acquire()
    assert "taken over by itself once untouched for 10 min" in str(refused.value)
    old = time.time() - outputs.STALE_AFTER_SECONDS - 5
    os.utime(lock.path, (old, old))
    with OutputLock(tmp_path / "out", "nnkd_export") as taken:
        assert json.loads(taken.path.read_text())["host"] == socket.gethostname()
    assert "took over the stale lock of nnkd_distill (pid 1, on elsewhere, untouched for more than 10 min)" in \
        capsys.readouterr().out
    assert not lock.path.exists()


def test_a_held_lock_is_touched_until_it_is_released(tmp_path, monkeypatch):
    from nnkd import outputs

    monkeypatch.setattr(outputs, "HEARTBEAT_SECONDS", 0.02)
    lock = OutputLock(tmp_path / "out", "nnkd_distill")
    with lock:
        old = time.time() - 3600
        os.utime(lock.path, (old, old))
        deadline = time.time() + 10
        while lock.path.stat().st_mtime < old + 60 and time.time() < deadline:
            time.sleep(0.02)
        assert lock.path.stat().st_mtime > old + 60  # touched again by the heartbeat
    lock._heartbeat.join(timeout=5)
    assert not lock._heartbeat.is_alive() and not lock.path.exists()


# ------------------------------------------------------------------------------------------------- permissions
def test_atomic_json_keeps_the_umask_permissions(tmp_path):
    from nnkd.atomic import write_json_atomic

    previous = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "plans.json", {"a": 1})
        os.umask(0o077)
        write_json_atomic(tmp_path / "private.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "plans.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------- property: -o at what a command must not write, per CLI
def _targets(env: dict, teacher: dict, trained: dict) -> dict:
    raw, preprocessed = Path(env["nnUNet_raw"]), Path(env["nnUNet_preprocessed"])
    images = raw / DATASET / "imagesTs"
    return {"raw": raw, "raw-dataset": raw / DATASET, "raw-labelsTs": raw / DATASET / "labelsTs",
            "raw-new-folder": raw / DATASET / "predictions", "preprocessed": preprocessed / DATASET,
            "teacher-model": teacher["folder"], "teacher-fold": teacher["folder"] / "fold_0",
            "student-model": trained["logit"][0].parent, "results-dataset": Path(env["nnUNet_results"]) / DATASET,
            "input": images, "inside-input": images / "predictions"}


TARGETS = ["raw", "raw-dataset", "raw-labelsTs", "raw-new-folder", "preprocessed", "teacher-model", "teacher-fold",
           "student-model", "results-dataset", "input", "inside-input"]
GUARDED = ["nnkd_predict", "nnkd_export", "nnkd_distill"]


def _guarded_call(command: str, out: Path, env: dict, teacher: dict) -> tuple:
    images = Path(env["nnUNet_raw"]) / DATASET / "imagesTs"
    args = {"nnkd_predict": ["-i", images, "-o", out, *STUDENT, *FAST],
            "nnkd_export": [*STUDENT, "-o", out, "--overwrite", "--zip"],
            "nnkd_distill": ["-d", PLANNED_ID, "--teacher", teacher["spec"], "-o", out, *QUICK_TRAINING,
                             "--no-timing"]}[command]
    return command, args, env


@pytest.fixture(scope="module")
def misdirected(request, teacher, trained):
    """Every collected (command, target) below, run in this process (refuse_all_in_process); nnU-Net's three
    folders digested (sha256 and mtime of every file) before and after them all."""
    env = teacher["env"]
    targets = _targets(env, teacher, trained)
    cases = [(c, t) for c, t in zip(selected_params(request, "test_no_command_writes_where_it_must_not", "command"),
                                     selected_params(request, "test_no_command_writes_where_it_must_not", "target"))]
    roots = [Path(env[n]) for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")]
    before = [tree_digest(r) for r in roots]
    listing = {r: sorted(p for p in r.rglob("*")) for r in roots}
    results = refuse_all_in_process([_guarded_call(c, targets[t], env, teacher) for c, t in cases])
    return {"runs": dict(zip(cases, results)), "unchanged": [tree_digest(r) for r in roots] == before,
            "same_paths": all(sorted(r.rglob("*")) == listing[r] for r in roots)}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("command", GUARDED)
def test_no_command_writes_where_it_must_not(command, target, misdirected):
    """predict, export (--overwrite --zip) and distill pointed at nnUNet_raw, a raw dataset or its labels, a
    preprocessed dataset, the teacher's or the student's model folder or a fold of it, a results dataset, the input
    images or a folder inside them: each stops with one line and nothing in nnU-Net's folders changes."""
    line = error_line(misdirected["runs"][command, target])
    assert "-o" in line or "output folder" in line, line
    assert misdirected["unchanged"] and misdirected["same_paths"]


def test_the_benchmark_writes_neither_into_nnunets_folders_nor_into_a_model(teacher, trained):
    """nnkd_benchmark -o at a raw dataset, a trained model or a results dataset stops with one line, nothing written."""
    env = teacher["env"]
    targets = _targets(env, teacher, trained)
    roots = [Path(env[n]) for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")]
    before = [tree_digest(r) for r in roots]
    results = refuse_all_in_process([("nnkd_benchmark", ["--quick", "-d", PLANNED_ID, "--teacher", teacher["spec"],
                                                         "-o", targets[t]], env)
                                     for t in ("raw-dataset", "teacher-model", "results-dataset")])
    for result, where in zip(results, ("is inside nnUNet_raw", "is the trained model folder", "was not written by")):
        assert where in error_line(result)
    assert [tree_digest(r) for r in roots] == before


# --------------------------------------------------------------------- reruns keep what the user added to OUT
def test_export_overwrite_replaces_only_its_own_files(trained, teacher, tmp_path):
    env = teacher["env"]
    out = tmp_path / "model"
    run_cli("nnkd_export", *STUDENT, "-o", out, "--zip", env=env)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["command"] == "nnkd_export" and "fold_0/checkpoint_final.pth" in manifest["files"]
    assert "../model.zip" in manifest["files"]
    (out / "notes.txt").write_text("keep me")
    (out / "figures").mkdir()
    (out / "figures" / "dice.png").write_bytes(b"png")
    (out / "fold_0" / "my_eval.csv").write_text("case,dice\n")
    refused = refuse_in_process("nnkd_export", *STUDENT, "-o", out, env=env)
    assert "pass --overwrite" in error_line(refused)
    run_cli("nnkd_export", *STUDENT, "-o", out, "--overwrite", "--zip", env=env)
    assert (out / "notes.txt").read_text() == "keep me" and (out / "figures" / "dice.png").is_file()
    assert (out / "fold_0" / "my_eval.csv").is_file() and (out / "fold_0" / "checkpoint_final.pth").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging, lock or temporary
    import zipfile

    names = zipfile.ZipFile(tmp_path / "model.zip").namelist()  # the exported model only, zipped before the swap
    assert any(n.endswith("fold_0/checkpoint_final.pth") for n in names)
    assert not any(n.endswith(("notes.txt", MANIFEST, "dice.png")) for n in names), names
    for name in ("plans.json", "dataset.json", MANIFEST):  # readable by colleagues under umask 022
        assert (out / name).stat().st_mode & 0o044 == 0o044, name

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    before = tree_digest(foreign)
    refused = refuse_in_process("nnkd_export", *STUDENT, "-o", foreign, "--overwrite", env=env)
    assert "was not written by nnkd_export" in error_line(refused)
    assert tree_digest(foreign) == before


def test_export_zip_onto_a_folder_is_refused_before_anything_is_written(trained, teacher, tmp_path):
    (tmp_path / "model.zip").mkdir()
    result = refuse_in_process("nnkd_export", *STUDENT, "-o", tmp_path / "model", "--zip", env=teacher["env"])
    assert "model.zip exists and is not a file" in error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]


def test_predict_never_replaces_a_file_it_did_not_write(trained, teacher, tmp_path):
    env = teacher["env"]
    images = Path(env["nnUNet_raw"]) / DATASET / "imagesTs"
    case = sorted(images.glob("*_0000.nii.gz"))[0].name.replace("_0000.nii.gz", ".nii.gz")
    out = tmp_path / "preds"
    out.mkdir()
    (out / case).write_bytes(b"ground truth the user keeps here")
    result = refuse_in_process("nnkd_predict", "-i", images, "-o", out, *STUDENT, *FAST, env=env)
    assert f"already holds {case}, which nnkd_predict did not write" in error_line(result)
    assert sorted(p.name for p in out.iterdir()) == [case]


# ------------------------------------------------------------------ numbers checked before anything is written
TRAIN = [str(PLANNED_ID), "3d_fullres", "0", "--budget", "tiny"]
CACHE = ["-d", str(PLANNED_ID), "-c", "3d_fullres", "-f", "0", "--device", "cpu"]
NUMBERS = {  # (command, arguments; "{t}" the teacher spec, "{tmp}" a fresh folder), fragment of the error line
    "train-kd-weight-inf": ("nnkd_train", [*TRAIN, "--method", "logit", "--teacher", "{t}", "--hp", "kd_weight=inf"],
                            "kd_weight=inf is not a finite number"),
    "train-kd-weight-nan": ("nnkd_train", [*TRAIN, "--method", "logit", "--teacher", "{t}", "--hp", "kd_weight=nan"],
                            "kd_weight=nan is not a finite number"),
    "train-temperature-inf": ("nnkd_train", [*TRAIN, "--method", "logit", "--teacher", "{t}", "--hp",
                                             "kd_temperature=inf"], "kd_temperature=inf is not a finite number"),
    "train-seed-huge": ("nnkd_train", [*TRAIN, "--method", "none", "--seed", "99999999999999999999"],
                        "is outside 0…4294967295"),
    "train-seed-negative": ("nnkd_train", [*TRAIN, "--method", "none", "--seed", "-1"], "is outside 0…4294967295"),
    "distill-kd-weight-nan": ("nnkd_distill", ["-d", str(PLANNED_ID), "--teacher", "{t}", "-o", "{tmp}/out", "--hp",
                                               "kd_weight=nan"], "kd_weight=nan is not a finite number"),
    "distill-kd-weight-negative": ("nnkd_distill", ["-d", str(PLANNED_ID), "--teacher", "{t}", "-o", "{tmp}/out",
                                                    "--hp", "kd_weight=-1"], "kd_weight -1.0 must be at least 0"),
    "distill-unknown-hp": ("nnkd_distill", ["-d", str(PLANNED_ID), "--teacher", "{t}", "-o", "{tmp}/out", "--hp",
                                            "temperature=2"], "has no hyper-parameter 'temperature'"),
    "distill-run-name": ("nnkd_distill", ["-d", str(PLANNED_ID), "--teacher", "{t}", "-o", "{tmp}/out",
                                          "--run-name", "a/b"], "run name 'a/b' cannot name a folder"),
    "distill-seed-huge": ("nnkd_distill", ["-d", str(PLANNED_ID), "--teacher", "{t}", "-o", "{tmp}/out", "--seed",
                                           "99999999999999999999"], "is outside 0…4294967295"),
    "distill-max-gflops-inf": ("nnkd_distill", ["-d", str(PLANNED_ID), "--teacher", "{t}", "-o", "{tmp}/out",
                                                "--max-gflops", "inf"], "inf is not a finite number"),
    "distill-np-zero": ("nnkd_distill", ["-d", str(PLANNED_ID), "--teacher", "{t}", "-o", "{tmp}/out", "-np", "0"],
                        "0 must be at least 1"),
    "plan-max-params-above-teacher": ("nnkd_plan_and_preprocess", ["-d", str(PLANNED_ID), "-c", "3d_fullres",
                                                                   "--max-params", "100000000000000000000", "--no_pp"],
                                      "the student would be the teacher"),
    "plan-max-params-above-teacher-default-configurations": (
        "nnkd_plan_and_preprocess", ["-d", str(PLANNED_ID), "--max-params", "100000000000000000000", "--no_pp"],
        "the student would be the teacher"),
    "distill-max-gflops-above-teacher": ("nnkd_distill", ["-d", str(PLANNED_ID), "--teacher", "{t}", "-o",
                                                          "{tmp}/out", "--max-gflops", "1e9"],
                                         "the student would be the teacher"),
    "plan-max-gflops-nan": ("nnkd_plan_and_preprocess", ["-d", str(PLANNED_ID), "--max-gflops", "nan", "--no_pp"],
                            "nan is not a finite number"),
    "predict-npp-zero": ("nnkd_predict", ["-i", "{img}", "-o", "{tmp}/out", *STUDENT, "-npp", "0"],
                         "argument -npp: 0 must be at least 1"),
    "predict-nps-zero": ("nnkd_predict", ["-i", "{img}", "-o", "{tmp}/out", *STUDENT, "-nps", "0"],
                         "argument -nps: 0 must be at least 1"),
    "predict-step-size-nan": ("nnkd_predict", ["-i", "{img}", "-o", "{tmp}/out", *STUDENT, "-step_size", "nan"],
                              "nan is not a finite number"),
    "synthesize-into-model": ("nnkd_synthesize", ["-d", str(PLANNED_ID), "-n", "1", "-o", "{tf}/fold_0/set"],
                              "is inside the trained model folder"),
    "synthesize-into-preprocessed": ("nnkd_synthesize", ["-d", str(PLANNED_ID), "-n", "1", "-o", "{pre}/set"],
                                     "is inside nnUNet_preprocessed"),
    "cache-topk-zero": ("nnkd_cache_teacher", [*CACHE, "--teacher", "{t}", "--topk", "0"], "--topk 0 keeps no class"),
    "cache-topk-above-classes": ("nnkd_cache_teacher", [*CACHE, "--teacher", "{t}", "--topk", "99"],
                                 "--topk 99 is more than the dataset's"),
    "cache-num-parts-zero": ("nnkd_cache_teacher", [*CACHE, "--teacher", "{t}", "-num_parts", "0"],
                             "-num_parts 0 is not positive"),
    "cache-part-id-outside": ("nnkd_cache_teacher", [*CACHE, "--teacher", "{t}", "-num_parts", "2", "-part_id", "2"],
                              "-part_id 2 is not between 0 and 1"),
}


@pytest.fixture(scope="module")
def numbers(request, teacher, tmp_path_factory):
    env = teacher["env"]
    roots = [Path(env[n]) for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")]
    calls, folders = [], {}
    for case in selected_params(request, "test_a_bad_number_is_refused_before_anything_is_written", "case"):
        command, args, _ = NUMBERS[case]
        tmp = folders[case] = tmp_path_factory.mktemp(case)
        values = {"{t}": teacher["spec"], "{tmp}": str(tmp), "{tf}": str(teacher["folder"]),
                  "{pre}": str(Path(env["nnUNet_preprocessed"]) / DATASET),
                  "{img}": str(Path(env["nnUNet_raw"]) / DATASET / "imagesTs")}
        filled = []
        for arg in args:
            for key, value in values.items():
                arg = arg.replace(key, value)
            filled.append(arg)
        calls.append((command, filled, env))
    before = [tree_digest(r) for r in roots]
    results = refuse_all_in_process(calls)
    return {"runs": dict(zip(folders, results)), "folders": folders,
            "unchanged": [tree_digest(r) for r in roots] == before}


@pytest.mark.parametrize("case", list(NUMBERS))
def test_a_bad_number_is_refused_before_anything_is_written(case, numbers):
    assert NUMBERS[case][2] in error_line(numbers["runs"][case])
    assert numbers["unchanged"]  # no plans, cache, run folder or teacher.json
    assert list(numbers["folders"][case].iterdir()) == []


# ------------------------------------------------------------------------- inputs checked before nnU-Net's workers
def _nifti(path: Path, data) -> None:
    import nibabel
    import numpy as np

    nibabel.save(nibabel.Nifti1Image(np.asarray(data), np.eye(4)), str(path))


@pytest.mark.parametrize("case", ["four-d", "nan", "inf", "all-nan"])
def test_an_image_nnunet_would_mishandle_is_refused_naming_the_case(case, tmp_path):
    import numpy as np

    from nnkd.inference.inputs import collect_cases

    good = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    _nifti(tmp_path / "ok_0000.nii.gz", good)
    bad = {"four-d": np.stack([good, good], -1), "nan": np.where(good > 1, np.nan, good),
           "inf": np.where(good > 1, np.inf, good), "all-nan": np.full_like(good, np.nan)}[case]
    _nifti(tmp_path / "broken_0000.nii.gz", bad)
    with pytest.raises(NnkdError) as refused:
        collect_cases(tmp_path, ".nii.gz", 1, reader=None)
    message = str(refused.value)
    assert message.startswith("case broken: broken_0000.nii.gz has ")
    assert ("4 dimensions" in message) if case == "four-d" else ("NaN or infinite voxel(s)" in message)
    (tmp_path / "broken_0000.nii.gz").unlink()
    _nifti(tmp_path / "ints_0000.nii.gz", np.arange(512, dtype=np.int16).reshape(8, 8, 8))
    assert sorted(collect_cases(tmp_path, ".nii.gz", 1, reader=None)) == ["ints", "ok"]


# ------------------------------------------------------------------- a finished fold is reused only when it fits
def _finished_fold(tmp_path: Path, **record) -> Path:
    from nnkd.trainers.run_config import RunConfig

    fold = tmp_path / "nnKDTrainer_Logit@x__nnKDPlans_tiny__3d_fullres" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_final.pth").write_bytes(b"")
    from nnkd.trainers.methods import METHODS

    defaults = METHODS["logit"].default_settings()
    RunConfig(method="logit", trainer="nnKDTrainer_Logit", teacher={"spec": "nnunet:/t", "cache": "/c"},
              hyperparameters=defaults | record.pop("hp", {}), schedule=record.pop("schedule", {"num_epochs": 1}),
              seed=record.pop("seed", None)).save(fold)
    return fold


REUSE = {  # request changes -> fragment of the refusal (None: the fold is reused)
    "same": ({}, None),
    "more-epochs": ({"num_epochs": 50}, "was started with --epochs 1, not 50"),
    "default-epochs": ({"num_epochs": None}, "was started with --epochs 1, not (the default)"),
    "other-hp": ({"hyperparameters": {"kd_temperature": "4"}}, "--hp"),
    "other-seed": ({"seed": 3}, "--seed (the default), not 3"),
    "other-teacher": ({"teacher": "nnunet:/other"}, "--teacher nnunet:/t, not nnunet:/other"),
    "online": ({"online": True}, "--online False, not True"),
}


@pytest.mark.parametrize("case", list(REUSE))
def test_a_finished_fold_is_reused_only_when_its_record_equals_the_request(case, tmp_path):
    from dataclasses import replace

    from nnkd.pipeline.distill import DistillRequest, check_reusable

    fold = _finished_fold(tmp_path)
    changes, fragment = REUSE[case]
    request = replace(DistillRequest(dataset="991", teacher="nnunet:/t", output=tmp_path / "out", num_epochs=1),
                      **changes)
    cached = not request.online
    if fragment is None:
        check_reusable(fold, request, "0", cached)
        return
    with pytest.raises(NnkdError) as refused:
        check_reusable(fold, request, "0", cached)
    assert fragment in refused.value.problem and "--run-name" in refused.value.remedy


def test_an_export_may_be_replaced_but_not_written_into(layout):
    export = layout["tmp"] / "exported"
    (export / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "fold_0/checkpoint_final.pth"):
        (export / name).write_text("{}")
    write_manifest(export, "nnkd_export", ["plans.json", "dataset.json", "fold_0/checkpoint_final.pth"])
    assert check_output(export, "nnkd_export", overwrite=True) == export
    with pytest.raises(NnkdError, match="is inside the trained model folder"):
        check_output(export / "fold_0", "nnkd_export")


def test_a_killed_exports_staging_folder_is_removed_by_the_next_one(tmp_path):
    from nnkd.atomic import remove_stale_temporaries

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".model.tmp-{dead.pid}" / "fold_0").mkdir(parents=True)
    (tmp_path / f".model.zip.tmp-{dead.pid}").write_bytes(b"partial zip")
    remove_stale_temporaries(tmp_path / ".model")
    remove_stale_temporaries(tmp_path / ".model.zip")
    assert list(tmp_path.iterdir()) == []


def test_nnkd_synthesize_may_write_its_own_transfer_folder(layout):
    own = layout["nnUNet_preprocessed"] / "Dataset990_X" / "nnkd_transfer" / "nnUNetPlans__3d_fullres" / "mine"
    assert check_output(own, "nnkd_synthesize", replaces=False, own_preprocessed_folder="nnkd_transfer") == own
    with pytest.raises(NnkdError, match="is inside nnUNet_preprocessed"):
        check_output(layout["nnUNet_preprocessed"] / "Dataset990_X" / "other", "nnkd_synthesize", replaces=False,
                     own_preprocessed_folder="nnkd_transfer")


def test_a_cache_restarted_with_other_settings_leaves_no_stale_files(tmp_path):
    import numpy as np

    from nnkd.cache.store import CacheSettings, TeacherCache

    class Teacher:
        spec, checkpoint_path, checkpoint_sha256 = "test", None, "sha"

    probabilities = np.full((4, 8, 8, 8), 0.25, dtype=np.float32)
    cache = TeacherCache(tmp_path / "cache")
    cache.start(Teacher(), CacheSettings(topk=2), {"a": 0, "b": 1, "c": 2, "d": 3}, False, (8, 8, 8), "3d_fullres")
    cache.write_case("case_000", probabilities, "sha")
    assert (tmp_path / "cache" / "case_000_idx.b2nd").is_file()
    again = TeacherCache(tmp_path / "cache")
    again.start(Teacher(), CacheSettings(), {"a": 0, "b": 1, "c": 2, "d": 3}, False, (8, 8, 8), "3d_fullres")
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.b2nd")) == []
    again.write_case("case_000", probabilities, "sha")
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.b2nd")) == ["case_000.b2nd"]


def test_training_from_a_truncated_cache_stops_before_the_run_folder_is_written(teacher, tmp_path):
    import shutil

    from conftest import make_env, training_env

    env = training_env(make_env(tmp_path / "nnunet"))
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(Path(teacher["env"][name]) / DATASET, Path(env[name]) / DATASET)
    spec = f"{teacher['spec']}?fold=0"
    run_cli("nnkd_cache_teacher", *CACHE, "--teacher", spec, env=env)
    stored = sorted((Path(env["nnUNet_preprocessed"]) / DATASET).glob("nnkd_teacher_cache/*/*.b2nd"))[0]
    stored.write_bytes(stored.read_bytes()[:100])
    result = run_cli("nnkd_train", *TRAIN, "--method", "logit", "--teacher", spec, "--teacher-cache",
                     *QUICK_TRAINING, env=env, check=False)
    assert "lacks or has corrupt entries for 1 case(s)" in error_line(result)
    assert list(Path(env["nnUNet_results"]).iterdir()) == []  # no teacher.json, no log, no run folder


def test_a_command_refused_inside_its_lock_leaves_no_folder_behind(tmp_path):
    fold = tmp_path / "results" / "Dataset990_X" / "nnKDTeacherTuner__nnUNetPlans__3d_fullres" / "fold_0"
    with pytest.raises(NnkdError, match="--labeled 0"):
        with OutputLock(fold, "nnkd_tune_teacher"):
            raise NnkdError("--labeled 0 keeps no labelled case", "give --labeled 1 or more")
    assert list(tmp_path.iterdir()) == []
    with OutputLock(fold, "nnkd_tune_teacher"):
        fold.mkdir()  # what the command wrote stays
    assert fold.is_dir() and list(fold.parent.iterdir()) == [fold]


def test_distill_output_identity_compares_values_not_spellings(layout, monkeypatch):
    """A rerun with --hp kd_weight=1.0 is the request of kd_weight=1; another kd_weight is not."""
    from dataclasses import replace

    from nnkd.pipeline.distill import RECORD, DistillRequest, checked_output, request_identity

    (layout["nnUNet_raw"] / "Dataset990_X" / "dataset.json").write_text("{}")
    out = layout["tmp"] / "student"
    out.mkdir()
    first = DistillRequest(dataset="990", teacher="nnunet:/t", output=out, hyperparameters={"kd_weight": "1"})
    (out / RECORD).write_text(json.dumps(request_identity(first)))
    write_manifest(out, "nnkd_distill", [RECORD])
    assert checked_output(out, replace(first, hyperparameters={"kd_weight": "1.0"})) == out
    with pytest.raises(NnkdError, match="holds the nnkd_distill output of another request: hyperparameters"):
        checked_output(out, replace(first, hyperparameters={"kd_weight": "2"}))
