"""nnkd_train end to end: a real nnU-Net teacher, the tiny student, nnU-Net's whole pipeline."""

import json
from pathlib import Path

import pytest
import torch

from conftest import PLANNED_ID, QUICK_TRAINING, ROOT, fake_teacher, run_cli, run_fold
from nnkd.plans import network_from_plans
from nnkd.checkpoints import sha256_of


def training_log(fold_folder: Path) -> str:
    """The run's training logs, joined (a refused --c leaves a log of its own beside the run's)."""
    return "\n".join(p.read_text() for p in sorted(fold_folder.glob("training_log_*.txt")))


def _student_network(fold_folder: Path):
    """The stock architecture from the run's own plans.json, as nnU-Net's predictor builds it."""
    plans = json.loads((fold_folder.parent / "plans.json").read_text())
    dataset_json = json.loads((fold_folder.parent / "dataset.json").read_text())
    return network_from_plans(plans, "3d_fullres", dataset_json, deep_supervision=True)


@pytest.mark.parametrize("method, term", [("none", None), ("logit", "kd_logit"), ("feature", "kd_feature")])
def test_each_method_trains_through_nnunets_pipeline(trained, teacher, method, term):
    folder, stdout = trained[method]
    for name in ("checkpoint_final.pth", "progress.png", "progress_kd.png", "validation/summary.json"):
        assert (folder / name).is_file(), name
    assert (folder.parent / "plans.json").is_file() and (folder.parent / "dataset.json").is_file()
    dice = json.loads((folder / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]
    assert 0 <= dice <= 1 and "validation Dice" in stdout

    log = training_log(folder)
    line = next(line for line in log.splitlines() if "distillation:" in line)
    assert "seg_loss" in line and (term is None or term in line)
    if method != "logit":  # the fixture trains none in float32 and feature in bf16 (student and teacher)
        assert ("training in bf16 autocast on this CPU" in log) == (method == "feature")
    # none validated with nnU-Net's mirroring, the others with nnkd_val_mirroring=0; every checkpoint keeps the
    # mirroring axes, so predictions from the model folder mirror as nnU-Net's do
    assert ("final validation without mirroring (nnkd_val_mirroring=0)" in log) == (method != "none")
    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["inference_allowed_mirroring_axes"] == (0, 1, 2)

    record = json.loads((folder / "teacher.json").read_text())
    assert record["method"] == method and record["schedule"]["num_iterations_per_epoch"] == 2
    expected = {"none": {}, "logit": {"kd_temperature": 1.0, "kd_weight": 1.0, "kd_loss": "kl_balanced",
                          "kd_schedule": "constant"},
                "feature": {"feature_loss": "mse", "feature_weight": 1.0, "feature_stages": None}}[method]
    assert record["hyperparameters"] == expected
    if method == "none":
        assert record["teacher"] is None
    else:
        checkpoint = teacher["folder"] / "fold_0" / "checkpoint_final.pth"
        assert record["teacher"]["spec"] == teacher["spec"]
        assert record["teacher"]["sha256"] == sha256_of(checkpoint)


@pytest.mark.parametrize("method", ["none", "logit", "feature"])
def test_student_checkpoint_loads_strictly_into_the_plan_architecture(trained, method):
    folder, _ = trained[method]
    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    network = _student_network(folder)
    network.load_state_dict(checkpoint["network_weights"], strict=True)
    assert checkpoint["nnkd"]["method"] == method
    has_helpers = checkpoint["nnkd"]["helpers"] is not None
    assert has_helpers == (method == "feature")


def test_resume_continues_from_the_saved_epoch_with_identical_helpers(trained, teacher, monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnkd.trainers import EXT_TRAINER_FOLDER

    folder, _ = trained["feature"]
    monkeypatch.setenv("nnUNet_extTrainer", EXT_TRAINER_FOLDER)  # the run's trainer name, <trainer>@<run name>
    nnKDTrainer_Feature = recursive_find_trainer_class_by_name(folder.parent.name.split("__")[0])
    assert nnKDTrainer_Feature.__name__.startswith("nnKDTrainer_Feature@nnunet")
    saved = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, teacher["env"][name])
    plans = json.loads((folder.parent / "plans.json").read_text())
    plans["continue_training"] = True
    trainer = nnKDTrainer_Feature(plans, "3d_fullres", 0, json.loads((folder.parent / "dataset.json").read_text()),
                                  device=torch.device("cpu"))
    trainer.load_checkpoint(str(folder / "checkpoint_final.pth"))
    assert trainer.current_epoch == saved["current_epoch"] == 1
    restored = trainer.kd_helpers.state_dict()
    assert restored.keys() == saved["nnkd"]["helpers"].keys()
    assert all(torch.equal(restored[k], saved["nnkd"]["helpers"][k]) for k in restored)
    assert len(trainer.optimizer.param_groups) == 2  # student + projectors
    assert trainer.kd_log == saved["nnkd"]["kd_log"]

    logs_before = set(folder.glob("training_log_*.txt"))
    run_cli("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "feature", "--c",
            "--epochs", "2", "--device", "cpu", env=teacher["env"])
    resumed = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert resumed["current_epoch"] == 2
    assert [len(v) for v in resumed["nnkd"]["kd_log"].values()] == [2, 2]
    new_log = "".join(p.read_text() for p in set(folder.glob("training_log_*.txt")) - logs_before)
    assert "Epoch 1" in new_log and "Epoch 0\n" not in new_log


def test_a_custom_method_from_the_docs_trains(teacher):
    """The worked example in docs/training.md, run as a user would."""
    example = ROOT / "docs" / "examples" / "my_methods" / "probability_mse.py"
    assert example.read_text().strip() in (ROOT / "docs" / "training.md").read_text()
    env = {**teacher["env"], "nnUNet_extTrainer": str(example.parent)}
    result = run_cli("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "-tr", "nnKDTrainer_ProbMSE",
                     "--teacher", teacher["spec"], "--hp", "kd_weight=2", *QUICK_TRAINING, env=env)
    folder = run_fold(Path(teacher["env"]["nnUNet_results"]) / "Dataset991_Synthetic",
                      "nnKDTrainer_ProbMSE")
    log = training_log(folder)
    assert "kd_prob_mse" in log and "'kd_weight': 2.0" in log
    assert "validation Dice" in result.stdout


def test_cka_distils_a_teacher_of_another_task_without_projectors(teacher, tmp_path):
    """CKA needs stage features only: a teacher with a different label set (no logit KD possible) teaches."""
    spec = fake_teacher(teacher["folder"], tmp_path,
                        edit_dataset=lambda d: d.update(labels={**d["labels"], "tumour": 4}))
    result = run_cli("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "cka",
                     "--teacher", spec, "--hp", "cka_max_rows=512", *QUICK_TRAINING, env=teacher["env"])
    folder = run_fold(Path(teacher["env"]["nnUNet_results"]) / "Dataset991_Synthetic",
                      "nnKDTrainer_CKA")
    log = training_log(folder)
    line = next(x for x in log.splitlines() if "distillation:" in x)
    cka_loss = float(line.split("kd_cka")[1].split(",")[0])
    assert 0 <= cka_loss <= 3  # three distilled stages, each 1 − CKA in [0, 1]
    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    _student_network(folder).load_state_dict(checkpoint["network_weights"], strict=True)
    assert checkpoint["nnkd"]["helpers"] is None and "validation Dice" in result.stdout


def test_drd_trains_and_its_export_holds_no_projector(teacher, tmp_path):
    result = run_cli("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "drd",
                     "--teacher", teacher["spec"], *QUICK_TRAINING, env=teacher["env"])
    folder = run_fold(Path(teacher["env"]["nnUNet_results"]) / "Dataset991_Synthetic",
                      "nnKDTrainer_DRD")
    line = next(x for x in training_log(folder).splitlines() if "distillation:" in x)
    assert all(term in line for term in ("kd_cka", "kd_hybrid_seg", "kd_hybrid_kl"))
    assert "validation Dice" in result.stdout
    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert any(k.startswith("projectors.") for k in checkpoint["nnkd"]["helpers"])

    run_cli("nnkd_export", "-d", PLANNED_ID, "-c", "3d_fullres", "-f", "0", "--budget", "tiny", "--method", "drd",
            "-o", tmp_path / "drd_model", env=teacher["env"])
    exported = torch.load(tmp_path / "drd_model" / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                          weights_only=True)
    assert set(exported["network_weights"]) == set(_student_network(folder).state_dict())
