"""Foundation-model teachers through nnkd_train: a real pretrained 3D teacher (deepbet) on real T1 anatomy,
and a 2D teacher on a 3D dataset, slice by slice."""

import json
from pathlib import Path

import pytest

from conftest import PLANNED_ID, QUICK_TRAINING, make_env, run_cli, training_env
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
    refused = run_cli("nnkd_train", MNI_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "logit",
                      "--teacher", "deepbet", *QUICK_TRAINING, env=env, check=False)
    assert refused.returncode != 0 and "teacher labels" in refused.stderr  # brain mask ≠ tissue classes
    run_cli("nnkd_train", MNI_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "cka", "--teacher", "deepbet",
            *QUICK_TRAINING, env=env)
    fold = (Path(env["nnUNet_results"]) / "Dataset993_MNITissue" / "nnKDTrainer_CKA__nnKDPlans_tiny__3d_fullres"
            / "fold_0")
    assert "kd_cka" in _kd_line(fold)
    record = json.loads((fold / "teacher.json").read_text())
    assert record["teacher"]["spec"] == "deepbet" and record["teacher"]["checkpoint"].endswith("model.pt")
    assert (fold / "checkpoint_final.pth").is_file()


@pytest.mark.parametrize("method, terms", [("feature", ["kd_feature"]), ("drd", ["kd_cka", "kd_hybrid_seg"])])
def test_a_2d_sam_teacher_teaches_a_3d_student_slice_by_slice(planned, tmp_path, method, terms):
    checkpoint = save_sam_checkpoint(tiny_sam_encoder(), tmp_path / "sam_vit_b_01ec64.pth")
    env = training_env({**planned["env"], "nnUNet_results": str(tmp_path / "results")})
    if method == "feature":
        refused = run_cli("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "logit",
                          "--teacher", f"sam:{checkpoint}", *QUICK_TRAINING, env=env, check=False)
        assert refused.returncode != 0 and "needs teacher logits" in refused.stderr
    result = run_cli("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", method,
                     "--teacher", f"sam:{checkpoint}?slices=4", *QUICK_TRAINING, env=env)
    trainer = {"feature": "Feature", "drd": "DRD"}[method]
    fold = (tmp_path / "results" / "Dataset991_Synthetic" / f"nnKDTrainer_{trainer}__nnKDPlans_tiny__3d_fullres"
            / "fold_0")
    line = _kd_line(fold)
    assert all(term in line for term in terms), line
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Teacher: 2D model, 1 input channel(s), stages (channels@stride) 32@16×16, 16@16×16, logits no" in log
    assert "validation Dice" in result.stdout
