"""nnkd_predict and nnkd_export: the student alone, stock nnU-Net without nnkd, ONNX Runtime."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import PLANNED_ID, ROOT, run_cli, tree_digest
from nnkd.plans import network_from_plans

STUDENT = ["-d", str(PLANNED_ID), "-c", "3d_fullres", "--budget", "tiny", "-f", "0"]
FAST = ["-device", "cpu", "-npp", "1", "-nps", "1"]


def _labels(folder: Path) -> dict:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def _error_line(result) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("nnkd: error:") and sum(x.startswith("nnkd: error:") for x in lines) == 1
    return lines[-1]


@pytest.fixture(scope="session")
def deployed(trained, teacher, tmp_path_factory):
    """The logit student predicted with nnkd, exported (zip + ONNX), and predicted by stock nnU-Net."""
    env = teacher["env"]
    root = tmp_path_factory.mktemp("deploy")
    images = Path(env["nnUNet_raw"]) / "Dataset991_Synthetic" / "imagesTs"
    before = tree_digest(images)
    predicted = run_cli("nnkd_predict", "-i", images, "-o", root / "nnkd", *STUDENT, "--method", "logit", *FAST,
                        env=env)
    exported = run_cli("nnkd_export", *STUDENT, "--method", "logit", "-o", root / "model", "--zip", "--onnx",
                       env=env)
    stock = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "stock_predict.py"), "-m",
                            str(root / "model"), "-i", str(images), "-o", str(root / "stock"), "-f", "0", *FAST],
                           env=env, capture_output=True, text=True)
    assert stock.returncode == 0, stock.stderr[-3000:]
    return {"root": root, "images": images, "images_before": before, "env": env,
            "predict_stdout": predicted.stdout, "export_stdout": exported.stdout}


def test_nnkd_predict_writes_what_nnunet_writes(deployed):
    out = deployed["root"] / "nnkd"
    cases = sorted(p.name.replace("_0000.nii.gz", ".nii.gz") for p in deployed["images"].glob("*_0000.nii.gz"))
    assert sorted(p.name for p in out.glob("*.nii.gz")) == cases
    assert {"dataset.json", "plans.json", "predict_from_raw_data_args.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging leftovers
    image = sitk.ReadImage(str(deployed["images"] / "test_000_0000.nii.gz"))
    label = sitk.ReadImage(str(out / "test_000.nii.gz"))
    assert label.GetSize() == image.GetSize() and np.allclose(label.GetSpacing(), image.GetSpacing())
    assert tree_digest(deployed["images"]) == deployed["images_before"]  # the input is never modified


def test_stock_nnunet_without_nnkd_predicts_identical_labels(deployed):
    ours, stock = _labels(deployed["root"] / "nnkd"), _labels(deployed["root"] / "stock")
    assert ours.keys() == stock.keys() and ours
    for name in ours:
        assert np.array_equal(ours[name], stock[name]), name


def test_exported_checkpoint_holds_exactly_the_student(deployed, trained):
    model = deployed["root"] / "model"
    assert {p.name for p in model.iterdir()} >= {"plans.json", "dataset.json", "dataset_fingerprint.json", "fold_0"}
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["trainer_name"] == "nnUNetTrainer" and "nnkd" not in checkpoint
    plans = json.loads((model / "plans.json").read_text())
    assert plans["plans_name"] == "nnKDPlans_tiny-logit"
    network = network_from_plans(plans, "3d_fullres", json.loads((model / "dataset.json").read_text()),
                                 deep_supervision=True)
    assert set(checkpoint["network_weights"]) == set(network.state_dict())
    source = torch.load(trained["logit"][0] / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert all(torch.equal(source["network_weights"][k], v) for k, v in checkpoint["network_weights"].items())


def test_zip_installs_with_nnunets_installer(deployed, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    run_cli("nnUNetv2_install_pretrained_model_from_zip", deployed["root"] / "model.zip",
            env={**deployed["env"], "nnUNet_results": str(results)})
    installed = results / "Dataset991_Synthetic" / "nnUNetTrainer__nnKDPlans_tiny-logit__3d_fullres"
    assert (installed / "plans.json").is_file() and (installed / "fold_0" / "checkpoint_final.pth").is_file()


def test_onnx_matches_torch_and_runs_the_sliding_window(deployed):
    model = deployed["root"] / "model"
    line = next(x for x in deployed["export_stdout"].splitlines() if "max |ONNX Runtime − torch|" in x)
    assert float(line.rsplit(" ", 1)[1]) < 1e-4
    sidecar = json.loads((model / "student.onnx.json").read_text())
    assert sidecar["input_channels"] == 1 and sidecar["intensity_normalization"] == ["ZScoreNormalization"]
    assert len(sidecar["spacing"]) == 3

    import onnxruntime
    session = onnxruntime.InferenceSession(str(model / "student.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(3, 1, 16, 32, 48)).astype(np.float32)  # other batch and size
    assert session.run(None, {"input": x})[0].shape == (3, 4, 16, 32, 48)

    out = deployed["root"] / "onnx"
    run_cli("nnkd_predict", "-i", deployed["images"], "-o", out, *STUDENT, "--method", "logit",
            "--onnx", model / "student.onnx", *FAST, env=deployed["env"])
    ours, onnx = _labels(deployed["root"] / "nnkd"), _labels(out)
    for name in ours:
        assert np.mean(ours[name] == onnx[name]) > 0.999, name


def test_continue_prediction_skips_finished_cases(deployed):
    result = run_cli("nnkd_predict", "-i", deployed["images"], "-o", deployed["root"] / "nnkd", *STUDENT,
                     "--method", "logit", "--continue_prediction", *FAST, env=deployed["env"])
    assert "0 case(s) left to predict" in result.stdout


def _corrupt_copy(images: Path, tmp: Path) -> Path:
    folder = tmp / "corrupt"
    shutil.copytree(images, folder)
    victim = sorted(folder.glob("*.nii.gz"))[0]
    victim.write_bytes(victim.read_bytes()[:300])
    return folder


def _empty_file(images: Path, tmp: Path) -> Path:
    folder = tmp / "empty_file"
    shutil.copytree(images, folder)
    sorted(folder.glob("*.nii.gz"))[0].write_bytes(b"")
    return folder


def _extra_channel(images: Path, tmp: Path) -> Path:
    folder = tmp / "channels"
    shutil.copytree(images, folder)
    first = sorted(folder.glob("*_0000.nii.gz"))[0]
    shutil.copy(first, first.with_name(first.name.replace("_0000", "_0001")))
    return folder


def _empty_folder(images: Path, tmp: Path) -> Path:
    (tmp / "nothing").mkdir()
    return tmp / "nothing"


@pytest.mark.parametrize("make_input, extra, fragment", [
    (_corrupt_copy, ["--method", "logit"], "cannot read case"),
    (_empty_file, ["--method", "logit"], "cannot read case"),
    (_extra_channel, ["--method", "logit"], "the model needs 1"),
    (_empty_folder, ["--method", "logit"], "no images named CASE_XXXX.nii.gz"),
    (None, ["--method", "logit", "-f", "3"], "fold 3 of nnKDTrainer_Logit__nnKDPlans_tiny__3d_fullres has no"),
    (None, [], "several trained students match (nnKDTrainer_Feature, nnKDTrainer_Logit"),
    (None, ["--method", "distil"], "unknown method 'distil'"),
], ids=["corrupt", "empty-file", "channels", "empty-folder", "missing-fold", "ambiguous", "method"])
def test_predict_bad_input(deployed, tmp_path, make_input, extra, fragment):
    images = make_input(deployed["images"], tmp_path) if make_input else deployed["images"]
    before = tree_digest(images)
    args = ["-d", str(PLANNED_ID), "-c", "3d_fullres", "--budget", "tiny", *extra]
    if "-f" not in extra:
        args += ["-f", "0"]
    result = run_cli("nnkd_predict", "-i", images, "-o", tmp_path / "out", *args, *FAST, env=deployed["env"],
                     check=False)
    assert fragment in _error_line(result)
    assert tree_digest(images) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["same", "inside"])
def test_predict_refuses_to_write_into_the_input_folder(deployed, where):
    out = deployed["images"] if where == "same" else deployed["images"] / "predictions"
    result = run_cli("nnkd_predict", "-i", deployed["images"], "-o", out, *STUDENT, "--method", "logit", *FAST,
                     env=deployed["env"], check=False)
    assert "is (inside) the input folder" in _error_line(result)
    assert tree_digest(deployed["images"]) == deployed["images_before"]


def test_export_refuses_a_non_empty_output_and_unknown_students(deployed, tmp_path):
    result = run_cli("nnkd_export", *STUDENT, "--method", "logit", "-o", deployed["root"] / "model",
                     env=deployed["env"], check=False)
    assert "exists and is not empty" in _error_line(result)
    result = run_cli("nnkd_export", "-d", str(PLANNED_ID), "-c", "3d_fullres", "--budget", "small", "--method",
                     "logit", "-o", tmp_path / "x", env=deployed["env"], check=False)
    assert "no trained student" in _error_line(result)
