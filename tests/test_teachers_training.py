"""Foundation-model teachers through nnkd_train: a real pretrained 3D teacher (deepbet) on real T1 anatomy,
and a 2D teacher on a 3D dataset, slice by slice."""

import json
from pathlib import Path

import pytest

from conftest import PLANNED_ID, QUICK_TRAINING, make_env, run_cli, run_clis, run_fold, selected_params, training_env
from helpers.mni_tissue import write_mni_tissue_dataset
from helpers.tiny_teachers import save_sam_checkpoint, tiny_sam_encoder

MNI_ID = 993


def _kd_line(fold_folder: Path) -> str:
    log = next(fold_folder.glob("training_log_*.txt")).read_text()
    return next(line for line in log.splitlines() if "distillation:" in line)


def test_deepbet_teaches_a_student_on_real_t1_anatomy(tmp_path):
    env = make_env(tmp_path)
    write_mni_tissue_dataset(Path(env["nnUNet_raw"]), MNI_ID)
    run_cli("nnkd_plan_and_preprocess", "-d", MNI_ID, "-c", "3d_fullres", "--budget", "tiny", "-np", "1", env=env)
    env = training_env(env)
    student = [MNI_ID, "3d_fullres", "0", "--budget", "tiny"]
    refused, trained = run_clis([  # independent: the refusal stops before training, in a folder of its own
        ("nnkd_train", [*student, "--method", "logit", "--teacher", "deepbet", *QUICK_TRAINING], env),
        ("nnkd_train", [*student, "--method", "cka", "--teacher", "deepbet", *QUICK_TRAINING], env)])
    assert refused.returncode != 0 and "teacher labels" in refused.stderr  # brain mask ≠ tissue classes
    assert trained.returncode == 0, trained.stderr[-3000:]
    fold = run_fold(Path(env["nnUNet_results"]) / "Dataset993_MNITissue", "nnKDTrainer_CKA")
    assert "kd_cka" in _kd_line(fold)
    record = json.loads((fold / "teacher.json").read_text())
    assert record["teacher"]["spec"] == "deepbet" and record["teacher"]["checkpoint"].endswith("model.pt")
    assert (fold / "checkpoint_final.pth").is_file()


@pytest.fixture(scope="module")
def sam_runs(request, planned, tmp_path_factory) -> dict:
    """A tiny 2D SAM teacher (slices=4) teaching the 3D student with each collected method below, in results
    folders of their own, and logit KD refused for it (no logits): all run side by side (run_clis).
    Returns method (or "refused") -> (result, results folder)."""
    checkpoint = save_sam_checkpoint(tiny_sam_encoder(), tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth")
    student = [PLANNED_ID, "3d_fullres", "0", "--budget", "tiny"]
    calls = {}
    for method in selected_params(request, "test_a_2d_sam_teacher_teaches_a_3d_student_slice_by_slice", "method"):
        calls[method] = [*student, "--method", method, "--teacher", f"sam:{checkpoint}?slices=4", *QUICK_TRAINING]
        if method == "feature":
            calls["refused"] = [*student, "--method", "logit", "--teacher", f"sam:{checkpoint}", *QUICK_TRAINING]
    results = {name: tmp_path_factory.mktemp(f"results_{name}") for name in calls}
    outputs = run_clis([("nnkd_train", args, training_env({**planned["env"], "nnUNet_results": str(results[name])}))
                        for name, args in calls.items()], workers=len(calls) or 1)
    return {name: (output, results[name]) for name, output in zip(calls, outputs)}


@pytest.mark.parametrize("method, terms", [("feature", ["kd_feature"]), ("drd", ["kd_cka", "kd_hybrid_seg"])])
def test_a_2d_sam_teacher_teaches_a_3d_student_slice_by_slice(sam_runs, method, terms):
    if method == "feature":
        refused, _ = sam_runs["refused"]
        assert refused.returncode != 0 and "needs teacher logits" in refused.stderr
    result, results = sam_runs[method]
    assert result.returncode == 0, result.stderr[-3000:]
    trainer = {"feature": "Feature", "drd": "DRD"}[method]
    fold = run_fold(results / "Dataset991_Synthetic", f"nnKDTrainer_{trainer}")
    line = _kd_line(fold)
    assert all(term in line for term in terms), line
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Teacher: 2D model, 1 input channel(s), stages (channels@stride) 32@16×16, 16@16×16, logits no" in log
    assert "validation Dice" in result.stdout
