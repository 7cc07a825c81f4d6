"""Shared fixtures: private nnU-Net folders and one small planned synthetic dataset per test session."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--cases", "8", "--shape", "32", "32", "32"]  # fast: 8 cases of about 32³
PLANNED_ID = 991


def run_cli(name: str, *args, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """Run an installed console script the way a user does; return its output."""
    result = subprocess.run([str(BIN / name), *map(str, args)], env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{name} {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def tree_digest(root: Path) -> dict:
    """sha256 and mtime of every file under root, to prove nothing was touched."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_env(root: Path) -> dict:
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(root / name)
    env.update(nnUNet_n_proc_DA="1", OMP_NUM_THREADS="2", nnUNet_def_n_proc="1")
    return env


@pytest.fixture
def nnunet_env(tmp_path) -> dict:
    """Empty nnU-Net folders of this test only."""
    return make_env(tmp_path)


@pytest.fixture(scope="session")
def planned(tmp_path_factory):
    """Dataset 991 (8 cases of ~32³) planned with a tiny budget and preprocessed for 3d_fullres."""
    env = make_env(tmp_path_factory.mktemp("planned"))
    run_cli("nnkd_make_synthetic", "-d", PLANNED_ID, *SMALL, env=env)
    raw = Path(env["nnUNet_raw"])
    before = tree_digest(raw)
    result = run_cli("nnkd_plan_and_preprocess", "-d", PLANNED_ID, "-c", "3d_fullres", "--budget", "tiny",
                     "-np", "1", "--verify_dataset_integrity", env=env)
    return {"env": env, "raw_before": before, "stdout": result.stdout,
            "preprocessed": Path(env["nnUNet_preprocessed"]) / "Dataset991_Synthetic"}


# One epoch of two iterations, one validation iteration: enough to run every part of nnU-Net's loop.
QUICK_TRAINING = ["--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations-per-epoch", "1",
                  "--device", "cpu"]


def training_env(env: dict, **extra) -> dict:
    """Single-threaded data augmentation (nnU-Net's planner needs nnUNet_n_proc_DA > 0, training not)."""
    return {**env, "nnUNet_n_proc_DA": "0", **extra}


@pytest.fixture(scope="session")
def teacher(planned):
    """A real nnU-Net teacher: stock nnUNetv2_train with a 2-iteration trainer nnkd never imports."""
    env = training_env(planned["env"])
    run_cli("nnUNetv2_train", PLANNED_ID, "3d_fullres", "0", "-tr", "nnUNetTrainer_Tiny", "-device", "cpu",
            env={**env, "nnUNet_extTrainer": str(ROOT / "tests" / "ext_trainers")})
    folder = Path(env["nnUNet_results"]) / "Dataset991_Synthetic" / "nnUNetTrainer_Tiny__nnUNetPlans__3d_fullres"
    return {"env": env, "folder": folder, "spec": f"nnunet:{folder}"}


@pytest.fixture(scope="session")
def trained(teacher):
    """The tiny student trained once with each built-in method; method -> (fold folder, stdout)."""
    runs = {}
    for method in ("none", "logit", "feature"):
        teacher_args = [] if method == "none" else ["--teacher", teacher["spec"]]
        result = run_cli("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", method,
                         *teacher_args, *QUICK_TRAINING, env=teacher["env"])
        trainer = {"none": "NoKD", "logit": "Logit", "feature": "Feature"}[method]
        folder = (Path(teacher["env"]["nnUNet_results"]) / "Dataset991_Synthetic" /
                  f"nnKDTrainer_{trainer}__nnKDPlans_tiny__3d_fullres" / "fold_0")
        runs[method] = (folder, result.stdout)
    return runs


def fake_teacher(teacher_folder: Path, target: Path, configuration="3d_fullres", edit_plans=None,
                 edit_dataset=None) -> str:
    """An nnU-Net model folder whose network is built from (edited) copies of the real teacher's files."""
    plans = json.loads((teacher_folder / "plans.json").read_text())
    dataset = json.loads((teacher_folder / "dataset.json").read_text())
    if edit_plans:
        edit_plans(plans)
    if edit_dataset:
        edit_dataset(dataset)
    folder = target / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    from nnkd.plans import network_from_plans

    network = network_from_plans(plans, configuration, dataset)
    torch.save({"network_weights": network.state_dict(), "init_args": {"configuration": configuration}},
               folder / "fold_0" / "checkpoint_final.pth")
    return f"nnunet:{folder}"
