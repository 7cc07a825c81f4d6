"""nnkd_train stops before the first step with one `nnkd: error:` line for each kind of bad input."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import PLANNED_ID, QUICK_TRAINING, fake_teacher, run_cli, selected_params, refuse_all_in_process

TRAIN = [str(PLANNED_ID), "3d_fullres", "0"]


def _error_line(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("nnkd: error:")]
    assert len(lines) == 1 and result.stderr.strip().splitlines()[-1] == lines[0], result.stderr[-3000:]
    return lines[0]


def _two_channels(dataset):
    dataset["channel_names"] = {"0": "T1", "1": "T2"}


def _extra_label(dataset):
    dataset["labels"] = {**dataset["labels"], "tumour": 4}


def _other_spacing(plans):
    plans["configurations"]["3d_fullres"]["spacing"] = [3.0, 1.0, 1.0]


def _ct_normalization(plans):
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["CTNormalization"]


UNFIT = {  # a teacher whose files do not fit the student's dataset or configuration
    "channels": (lambda t, p: fake_teacher(t, p, edit_dataset=_two_channels), "2 input channel(s), the dataset has 1"),
    "labels": (lambda t, p: fake_teacher(t, p, edit_dataset=_extra_label), "teacher labels"),
    "spacing": (lambda t, p: fake_teacher(t, p, edit_plans=_other_spacing), "expects spacing [3.0, 1.0, 1.0]"),
    "normalization": (lambda t, p: fake_teacher(t, p, edit_plans=_ct_normalization),
                      "expects ['CTNormalization'] normalization"),
    "dimensionality": (lambda t, p: fake_teacher(t, p, configuration="2d"),
                       "the teacher is 2D, configuration 3d_fullres is 3D"),
}


@pytest.mark.parametrize("case", list(UNFIT))
def test_teacher_that_cannot_teach_this_student(case, refusals):
    assert UNFIT[case][1] in _error_line(refusals["unfit", case])


def _truncated(folder: Path, tmp: Path) -> str:
    copy_ = tmp / folder.name
    shutil.copytree(folder, copy_)
    ckpt = copy_ / "fold_0" / "checkpoint_final.pth"
    ckpt.write_bytes(ckpt.read_bytes()[:2000])
    return f"nnunet:{copy_}"


def _not_a_checkpoint(folder: Path, tmp: Path) -> str:
    copy_ = tmp / folder.name
    shutil.copytree(folder, copy_)
    (copy_ / "fold_0" / "checkpoint_final.pth").write_text("this is not a checkpoint\n")
    return f"nnunet:{copy_}"


BAD_OPTIONS = {  # teacher spec ("{t}": the session's teacher; a function: made from it), arguments, fragment
    "method": (None, ["--method", "distil"], "unknown method 'distil'"),
    "no-teacher": (None, ["--method", "logit"], "needs a teacher"),
    "family": ("foo:/nowhere", ["--method", "logit"], "unknown teacher family 'foo'"),
    "folder": ("nnunet:/nowhere/at/all", ["--method", "logit"], "teacher folder /nowhere/at/all not found"),
    "option": ("{t}?color=red", ["--method", "logit"], "unknown option(s) color"),
    "fold": ("{t}?fold=3", ["--method", "logit"], "teacher fold 3 not found"),
    "checkpoint-file": ("{t}?checkpoint=checkpoint_latest.pth", ["--method", "logit"],
                        "checkpoint_latest.pth not found"),
    "spec-syntax": ("nnunet:", ["--method", "logit"], "is not of the form family:PATH"),
    "truncated": (_truncated, ["--method", "logit"], "cannot load checkpoint"),
    "not-a-checkpoint": (_not_a_checkpoint, ["--method", "logit"], "cannot load checkpoint"),
    "hp-name": ("{t}", ["--method", "logit", "--hp", "temperature=4"], "has no hyper-parameter 'temperature'"),
    "hp-value": ("{t}", ["--method", "logit", "--hp", "kd_temperature=hot"],
                 "kd_temperature='hot' is not a valid float"),
    "hp-syntax": ("{t}", ["--method", "logit", "--hp", "kd_temperature"], "is not NAME=VALUE"),
    "kd-loss": ("{t}", ["--method", "logit", "--hp", "kd_loss=hinton"], "kd_loss 'hinton' is unknown"),
    "kd-temperature": ("{t}", ["--method", "logit", "--hp", "kd_temperature=0"], "must be positive"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_method_teacher_or_options(case, refusals):
    assert BAD_OPTIONS[case][2] in _error_line(refusals["options", case])


BAD_PLANS = {  # arguments after dataset, configuration and fold 3; fragment
    "budget": (["--budget", "huge", "--method", "none"], "unknown budget 'huge'"),
    "unplanned": (["--budget", "medium", "--method", "none"], "plan first"),
    "no-plans": (["--method", "none"], "no student plans given"),
    "resume": (["--budget", "tiny", "--method", "none", "--c"], "nothing to resume"),
    "validate": (["--budget", "tiny", "--method", "none", "--val"], "nothing to validate"),
}


@pytest.mark.parametrize("case", list(BAD_PLANS))
def test_bad_plans_or_run_state(case, refusals):
    assert BAD_PLANS[case][1] in _error_line(refusals["plans", case])


def test_unknown_configuration_and_dataset(refusals):
    assert "unknown configuration '3d_lowres'" in _error_line(refusals["unknown", "configuration"])
    assert "dataset 555 not found" in _error_line(refusals["unknown", "dataset"])


def test_resuming_with_another_teacher_or_seed_is_refused(refusals):
    assert "this run was started with teacher" in _error_line(refusals["resume", "other-teacher"])
    assert "this run was started with --seed (the default), not 7" in _error_line(refusals["resume", "other-seed"])


@pytest.fixture(scope="module")
def refusals(request, trained, teacher, tmp_path_factory) -> dict:
    """The nnkd_train command of every collected case above, each with a folder of its own, run in this process
    (refuse_all_in_process) before any is checked; (group, case) -> its result."""
    env = teacher["env"]
    calls = {}
    for case in selected_params(request, "test_teacher_that_cannot_teach_this_student", "case"):
        spec = UNFIT[case][0](teacher["folder"], tmp_path_factory.mktemp(case))
        calls["unfit", case] = [*TRAIN, "--budget", "tiny", "--method", "logit", "--teacher", spec, *QUICK_TRAINING]
    for case in selected_params(request, "test_bad_method_teacher_or_options", "case"):
        spec, args, _ = BAD_OPTIONS[case]
        if callable(spec):
            spec = spec(teacher["folder"], tmp_path_factory.mktemp(case))
        elif spec:
            spec = spec.replace("{t}", teacher["spec"])
        calls["options", case] = [*TRAIN, "--budget", "tiny", *args, *(["--teacher", spec] if spec else []),
                                  *QUICK_TRAINING]
    for case in selected_params(request, "test_bad_plans_or_run_state", "case"):
        calls["plans", case] = [*TRAIN[:2], "3", *BAD_PLANS[case][0], "--device", "cpu"]
    if selected_params(request, "test_unknown_configuration_and_dataset"):
        calls["unknown", "configuration"] = [PLANNED_ID, "3d_lowres", "0", "--budget", "tiny", "--method", "none"]
        calls["unknown", "dataset"] = ["555", "3d_fullres", "0", "--budget", "tiny", "--method", "none"]
    if selected_params(request, "test_resuming_with_another_teacher_or_seed_is_refused"):
        other = fake_teacher(teacher["folder"], tmp_path_factory.mktemp("other_teacher"))
        calls["resume", "other-teacher"] = [*TRAIN, "--budget", "tiny", "--method", "logit", "--teacher", other,
                                            "--c", "--device", "cpu"]
        calls["resume", "other-seed"] = [*TRAIN, "--budget", "tiny", "--method", "logit", "--seed", "7", "--c",
                                         "--device", "cpu"]
    results = refuse_all_in_process([("nnkd_train", args, env) for args in calls.values()])
    return dict(zip(calls, results))


def test_changed_teacher_checkpoint_is_refused_on_resume(trained, teacher, tmp_path):
    """teacher.json keeps the sha256; a teacher replaced under the same path stops the resume."""
    folder, _ = trained["logit"]
    record = json.loads((folder / "teacher.json").read_text())
    changed = copy.deepcopy(record)
    changed["teacher"]["sha256"] = "0" * 64
    (folder / "teacher.json").write_text(json.dumps(changed))
    try:
        result = run_cli("nnkd_train", *TRAIN, "--budget", "tiny", "--method", "logit", "--c", "--epochs", "2",
                         "--device", "cpu", env=teacher["env"], check=False)
        assert "changed since this run started" in _error_line(result)
    finally:
        (folder / "teacher.json").write_text(json.dumps(record))


def test_teacher_falls_back_to_fold_all_and_otherwise_names_its_folds(teacher, tmp_path):
    from nnkd.errors import NnkdError
    from nnkd.teachers.registry import create_teacher

    spec = fake_teacher(teacher["folder"], tmp_path)
    folder = Path(spec.split(":", 1)[1])
    (folder / "fold_0").rename(folder / "fold_all")
    loaded = create_teacher(spec, fold=0)
    assert loaded.checkpoint_path.endswith("fold_all/checkpoint_final.pth")
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    (folder / "fold_all").rename(folder / "fold_2")
    with pytest.raises(NnkdError, match="neither fold 0 nor fold all.*fold_2"):
        create_teacher(spec, fold=0)


def test_teacher_pads_patches_its_strides_do_not_divide(teacher, tmp_path):
    from nnkd.teachers.registry import create_teacher

    loaded = create_teacher(fake_teacher(teacher["folder"], tmp_path), fold=0)
    with torch.no_grad():
        out = loaded(torch.randn(1, 1, 19, 30, 26))
    assert out.logits.shape == (1, 4, 19, 30, 26)
    assert [f.shape[1] for f in out.features] == loaded.feature_channels
