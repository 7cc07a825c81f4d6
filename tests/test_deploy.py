"""nnkd_predict and nnkd_export: the student alone, stock nnU-Net without nnkd, ONNX Runtime."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import (PLANNED_ID, run_cli, run_clis, selected_params, tree_digest, refuse_all_in_process,
                      refuse_in_process)
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


@pytest.fixture(scope="module")
def deployed(deployed_student):
    """The logit student predicted with nnkd, exported (zip + ONNX), and predicted by stock nnU-Net (once per
    session, in conftest: test_reliability checks that none of it wrote nnUNet_raw)."""
    return deployed_student


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
    """nnkd_predict --stock runs nnU-Net's predictor on the stock network: stock nnU-Net predicts the same labels
    from the exported model folder, voxel for voxel."""
    ours, stock = _labels(deployed["root"] / "nnkd_stock"), _labels(deployed["root"] / "stock")
    assert ours.keys() == stock.keys() and ours
    for name in ours:
        assert np.array_equal(ours[name], stock[name]), name
    assert "Fast path" not in deployed["stock_stdout"]


def test_fast_path_is_the_default_and_predicts_the_stock_labels(deployed):
    """Without --stock the CPU prediction runs the fastest of torch, torch oneDNN, torch channels-last and ONNX Runtime (each
    checked against the stock network, timed on one patch); its labels are the stock network's (float ties aside)
    and no file of it is left."""
    line = next(x for x in deployed["predict_stdout"].splitlines() if x.startswith("Fast path:"))
    assert all(name in line for name in ("torch", "torch oneDNN", "torch channels-last", "onnxruntime")), line
    assert "left out" not in line and "on the fast path (" in deployed["predict_stdout"]
    fast, stock = _labels(deployed["root"] / "nnkd"), _labels(deployed["root"] / "nnkd_stock")
    assert fast.keys() == stock.keys() and fast
    for name in fast:
        assert np.mean(fast[name] == stock[name]) > 0.9999, name
    assert not [p for p in (deployed["root"] / "nnkd").iterdir() if p.suffix == ".onnx" or p.name.startswith(".")]


def test_fast_candidates_switch_folds_and_match_torch(trained):
    """The ONNX Runtime candidate holds one session per fold's weights and picks it when nnU-Net's predictor loads
    that fold's state dict (the same object, or equal weights); the channels-last one loads any stock state dict.
    Each matches the stock network to float tolerance."""
    from nnkd.checkpoints import load_checkpoint
    from nnkd.inference.fast import CANDIDATES, ONNXRUNTIME, choose

    fold = trained["logit"][0]
    plans = json.loads((fold.parent / "plans.json").read_text())
    dataset = json.loads((fold.parent / "dataset.json").read_text())
    network = network_from_plans(plans, "3d_fullres", dataset).eval()
    reference = network_from_plans(plans, "3d_fullres", dataset).eval()
    first = load_checkpoint(fold / "checkpoint_final.pth")["network_weights"]
    second = {k: v * 0.5 if v.is_floating_point() else v for k, v in first.items()}  # another "fold"
    patch = plans["configurations"]["3d_fullres"]["patch_size"]
    x = torch.randn(1, 1, *patch)
    for runtime in CANDIDATES:
        fast = choose(network, [first, second], 1, patch, patch, candidates=(runtime,))
        assert fast.runtime == runtime and set(fast.seconds) == {runtime} and not fast.left_out
        assert all(d < 1e-4 for d in fast.differences.values())
        for weights in (second, first, {k: v.clone() for k, v in second.items()}):
            fast.network.load_state_dict(weights)
            reference.load_state_dict(weights)
            with torch.no_grad():
                assert torch.allclose(fast.network(x), reference(x), atol=1e-4), runtime
    with pytest.raises(KeyError):
        choose(network, [first], 1, patch, patch, candidates=(ONNXRUNTIME,)).network.load_state_dict(second)


def test_fast_path_leaves_out_what_fails_or_differs_and_still_predicts(deployed, monkeypatch, tmp_path, capsys):
    """A conversion that fails, or whose logits differ from the stock network's by more than the tolerance, is
    left out with its reason; the prediction still runs (on the stock network when nothing else is left)."""
    import nnkd.inference.fast as fast_module
    import nnkd.network_runtimes as network_runtimes
    from nnkd.inference.predict import PredictRequest, predict
    from nnkd.inference.students import StudentRef

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, deployed["env"][name])

    def broken(*_, **__):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(fast_module, "onnx_bytes", broken)
    monkeypatch.setattr(network_runtimes, "TOLERANCE", -1.0)  # no candidate but the stock network itself passes
    student = StudentRef(dataset=str(PLANNED_ID), configuration="3d_fullres", folds=["0"], budget="tiny",
                         method="logit")
    predict(PredictRequest(input_folder=deployed["images"], output_folder=tmp_path / "out", student=student,
                           device="cpu", num_processes_preprocessing=1, num_processes_export=1, profile=True))
    out = capsys.readouterr().out
    assert "Fast path: torch (" in out
    assert "onnxruntime left out: its conversion failed (RuntimeError: exporter broke)" in out
    assert "torch channels-last left out: it differs from the stock network by" in out
    assert "torch oneDNN left out: it differs from the stock network by" in out
    record = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert record["runtime"] == "torch (fast path)" and set(record["fast_path"]["left_out"]) == {
        "onnxruntime", "torch oneDNN", "torch channels-last"}
    ours, stock = _labels(tmp_path / "out"), _labels(deployed["root"] / "nnkd_stock")
    assert ours.keys() == stock.keys() and all(np.array_equal(ours[n], stock[n]) for n in ours)


def test_exported_checkpoint_holds_exactly_the_student(deployed, trained):
    model = deployed["root"] / "model"
    assert {p.name for p in model.iterdir()} >= {"plans.json", "dataset.json", "dataset_fingerprint.json", "fold_0"}
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["trainer_name"] == "nnUNetTrainer" and "nnkd" not in checkpoint
    plans = json.loads((model / "plans.json").read_text())
    run_name = trained["logit"][0].parent.name.split("__")[0].partition("@")[2]
    assert run_name and plans["plans_name"] == f"nnKDPlans_tiny-logit-{run_name}"  # method and run: side by side
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
    (installed,) = (results / "Dataset991_Synthetic").glob("nnUNetTrainer__nnKDPlans_tiny-logit-*__3d_fullres")
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


def test_profile_splits_each_case_and_predicts_the_same_labels(deployed):
    out = deployed["root"] / "profiled"
    result = run_cli("nnkd_predict", "-i", deployed["images"], "-o", out, *STUDENT, "--method", "logit", "--profile",
                     *FAST, env=deployed["env"])
    record = json.loads((out / "profile.json").read_text())
    steps = ["read", "preprocess", "network", "resample", "write"]
    assert record["steps"] == steps and record["runtime"].endswith("(fast path)") and record["mirroring"] is True
    assert record["fast_path"]["runtime"] in record["fast_path"]["seconds_per_patch"]
    assert set(record["cases"]) == {p.name.removesuffix(".nii.gz") for p in (deployed["root"] / "nnkd").glob("*.nii.gz")}
    for case in record["cases"].values():
        assert list(case["seconds"]) == steps and all(v >= 0 for v in case["seconds"].values())
        assert case["seconds"]["network"] > 0 and case["total"] == pytest.approx(sum(case["seconds"].values()), abs=1e-3)
    assert sum(record["median"]["share"].values()) == pytest.approx(1, abs=0.01)
    assert "network" in result.stdout and "per case" in result.stdout
    ours, profiled = _labels(deployed["root"] / "nnkd_stock"), _labels(out)  # each run chooses its runtime anew
    assert ours.keys() == profiled.keys() and all(np.mean(ours[n] == profiled[n]) > 0.9999 for n in ours)


def test_bf16_predicts_the_float32_labels_and_is_refused_where_it_cannot_run(deployed, tmp_path):
    """--bf16: the network under CPU bf16 autocast (nnkd_cpu_bf16=1 forces it on any CPU, 0 refuses it); never with
    --onnx; nothing written when refused."""
    student = [*STUDENT, "--method", "logit", "--bf16", *FAST]
    env = deployed["env"]
    forced, off, onnx = run_clis([
        ("nnkd_predict", ["-i", deployed["images"], "-o", tmp_path / "bf16", *student, "--profile"],
         {**env, "nnkd_cpu_bf16": "1"}),
        ("nnkd_predict", ["-i", deployed["images"], "-o", tmp_path / "off", *student], {**env, "nnkd_cpu_bf16": "0"}),
        ("nnkd_predict", ["-i", deployed["images"], "-o", tmp_path / "onnx", *student, "--onnx",
                          deployed["root"] / "model" / "student.onnx"], env)])
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "in bf16 autocast" in forced.stdout
    assert json.loads((tmp_path / "bf16" / "profile.json").read_text())["runtime"] == "torch bf16"
    ours, bf16 = _labels(deployed["root"] / "nnkd"), _labels(tmp_path / "bf16")
    assert ours.keys() == bf16.keys() and ours
    for name in ours:
        assert np.mean(ours[name] == bf16[name]) > 0.99, name
    assert "does not compute bf16 natively" in _error_line(off) and not (tmp_path / "off").exists()
    assert "does not apply with --onnx" in _error_line(onnx) and not (tmp_path / "onnx").exists()


def test_onnx_prediction_loads_no_torch_checkpoint(deployed, monkeypatch, tmp_path):
    """--onnx takes the mirroring axes from the ONNX file's JSON; the torch checkpoints are never read."""
    import nnkd.inference.predict as predict_module
    from nnkd.inference.predict import PredictRequest, predict
    from nnkd.inference.students import StudentRef

    model = deployed["root"] / "model"
    assert "inference_allowed_mirroring_axes" in json.loads((model / "student.onnx.json").read_text())
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, deployed["env"][name])

    def refuse(*_, **__):
        raise AssertionError("a torch checkpoint was loaded")

    monkeypatch.setattr(predict_module, "load_student_weights", refuse)
    monkeypatch.setattr("nnkd.checkpoints.load_checkpoint", refuse)
    student = StudentRef(dataset=str(PLANNED_ID), configuration="3d_fullres", folds=["0"], budget="tiny",
                         method="logit")
    predict(PredictRequest(input_folder=deployed["images"], output_folder=tmp_path / "onnx", student=student,
                           onnx=model / "student.onnx", device="cpu", num_processes_preprocessing=1,
                           num_processes_export=1))
    assert _labels(tmp_path / "onnx").keys() == _labels(deployed["root"] / "nnkd").keys()


def test_continue_prediction_skips_finished_cases(deployed):
    result = run_cli("nnkd_predict", "-i", deployed["images"], "-o", deployed["root"] / "nnkd", *STUDENT,
                     "--method", "logit", "--continue_prediction", *FAST, env=deployed["env"])
    assert "0 case(s) left to predict" in result.stdout


def test_nnunet_postprocessing_tools_run_on_a_student(deployed, trained, tmp_path):
    """nnU-Net's connected-component postprocessing, as docs/deploy.md shows it: determined on the student's
    validation predictions with nnUNetv2_determine_postprocessing, applied to nnkd_predict's output with
    nnUNetv2_apply_postprocessing. Postprocessing only removes voxels."""
    env = deployed["env"]
    fold = trained["logit"][0]
    validation = tmp_path / "validation"  # a copy: the session's trained run stays as it was
    shutil.copytree(fold / "validation", validation)
    gt = Path(env["nnUNet_preprocessed"]) / "Dataset991_Synthetic" / "gt_segmentations"
    run_cli("nnUNetv2_determine_postprocessing", "-i", validation, "-ref", gt, "-plans_json",
            fold.parent / "plans.json", "-dataset_json", fold.parent / "dataset.json", "-np", "1", env=env)
    assert (validation / "postprocessing.pkl").is_file() and (validation / "postprocessing.json").is_file()
    out = tmp_path / "postprocessed"
    run_cli("nnUNetv2_apply_postprocessing", "-i", deployed["root"] / "nnkd", "-o", out, "-pp_pkl_file",
            validation / "postprocessing.pkl", "-np", "1", env=env)
    before, after = _labels(deployed["root"] / "nnkd"), _labels(out)
    assert before.keys() == after.keys() and before
    for name in before:
        kept = after[name] > 0
        assert np.array_equal(after[name][kept], before[name][kept]), name


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


BAD_INPUT = {  # input folder (None: imagesTs; a function: made from a copy of it), arguments, fragment
    "corrupt": (_corrupt_copy, ["--method", "logit"], "cannot read case"),
    "empty-file": (_empty_file, ["--method", "logit"], "cannot read case"),
    "channels": (_extra_channel, ["--method", "logit"], "the model needs 1"),
    "empty-folder": (_empty_folder, ["--method", "logit"], "no images named CASE_XXXX.nii.gz"),
    "missing-fold": (None, ["--method", "logit", "-f", "3"],
                     "fold 3 of nnKDTrainer_Logit@nnunet"),
    "ambiguous": (None, [], "several trained students match (nnKDTrainer_Feature@nnunet"),
    "method": (None, ["--method", "distil"], "unknown method 'distil'"),
}


@pytest.fixture(scope="module")
def refusals(request, deployed, tmp_path_factory) -> dict:
    """The command of every collected refusal case below, each with a folder of its own, run in this process
    (refuse_all_in_process) before any is checked: (group, case) -> (result, its folder, its input folder and that
    folder's digest before and after all the commands ran)."""
    env, cases = deployed["env"], {}
    for case in selected_params(request, "test_predict_bad_input", "case"):
        make_input, extra, _ = BAD_INPUT[case]
        tmp = tmp_path_factory.mktemp(case)
        images = make_input(deployed["images"], tmp) if make_input else deployed["images"]
        args = ["-d", str(PLANNED_ID), "-c", "3d_fullres", "--budget", "tiny", *extra]
        if "-f" not in extra:
            args += ["-f", "0"]
        cases["predict", case] = (tmp, images, ("nnkd_predict", ["-i", images, "-o", tmp / "out", *args, *FAST], env))
    for where in selected_params(request, "test_predict_refuses_to_write_into_the_input_folder", "where"):
        out = deployed["images"] if where == "same" else deployed["images"] / "predictions"
        cases["inside", where] = (None, deployed["images"], (
            "nnkd_predict", ["-i", deployed["images"], "-o", out, *STUDENT, "--method", "logit", *FAST], env))
    if selected_params(request, "test_export_refuses_a_non_empty_output_and_unknown_students"):
        cases["export", "non-empty"] = (None, None, (
            "nnkd_export", [*STUDENT, "--method", "logit", "-o", deployed["root"] / "model"], env))
        tmp = tmp_path_factory.mktemp("unknown_student")
        cases["export", "unknown"] = (tmp, None, (
            "nnkd_export", ["-d", str(PLANNED_ID), "-c", "3d_fullres", "--budget", "small", "--method", "logit",
                            "-o", tmp / "x"], env))
    inputs = {images for _, images, _ in cases.values() if images}
    before = {images: tree_digest(images) for images in inputs}
    results = refuse_all_in_process([call for _, _, call in cases.values()])
    after = {images: tree_digest(images) for images in inputs}
    return {key: (result, tmp, images, before.get(images), after.get(images))
            for (key, (tmp, images, _)), result in zip(cases.items(), results)}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_predict_bad_input(case, refusals):
    result, tmp, _, before, after = refusals["predict", case]
    assert BAD_INPUT[case][2] in _error_line(result)
    assert after == before and not (tmp / "out").exists()


@pytest.mark.parametrize("where", ["same", "inside"])
def test_predict_refuses_to_write_into_the_input_folder(deployed, refusals, where):
    result, _, _, _, after = refusals["inside", where]
    assert "is (inside) the input folder" in _error_line(result)
    assert after == deployed["images_before"]


def test_export_refuses_a_non_empty_output_and_unknown_students(refusals):
    assert "exists and is not empty" in _error_line(refusals["export", "non-empty"][0])
    result, tmp, *_ = refusals["export", "unknown"]
    assert "no trained student" in _error_line(result) and not (tmp / "x").exists()


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_a_truncated_nifti_is_found_without_decoding_it(tmp_path, ending):
    import gzip

    import nibabel

    from nnkd.inference.inputs import nifti_is_complete

    path = tmp_path / f"case_0000{ending}"
    data = np.random.default_rng(0).normal(size=(20, 24, 16)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), str(path))
    assert nifti_is_complete(str(path))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 200])
    assert not nifti_is_complete(str(path))
    if ending == ".nii.gz":  # two gzip members are a valid file whose trailer holds only the second's size
        raw = gzip.decompress(whole)
        path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
        assert nifti_is_complete(str(path))
        path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:])[:-50])
        assert not nifti_is_complete(str(path))


def test_int8_export_quantizes_checks_on_validation_and_predicts(deployed, tmp_path):
    """--onnx --int8: a QDQ int8 model beside the float one, its JSON with how it was calibrated and both models'
    Dice on the fold's validation cases; nnkd_predict runs it, and its labels match the float model's."""
    out = tmp_path / "model"
    result = run_cli("nnkd_export", *STUDENT, "--method", "logit", "-o", out, "--onnx", "--int8", env=deployed["env"])
    sidecar = json.loads((out / "student.int8.onnx.json").read_text())
    quantization = sidecar["quantization"]
    assert quantization["format"] == "QDQ" and quantization["calibration"]["patches"] > 0
    assert len(quantization["kept_float"]) == 2  # the convolutions that read the image and write the logits
    check = quantization["validation"]
    # "most voxels": this student trained 2 iterations, its logits are near ties that int8 rounding can flip
    # (a trained 2D student's labels agreed on 99.89 %, docs/deploy.md)
    assert check["cases"] > 0 and set(check["dice"]) == {"float32", "int8"} and check["label_agreement"] > 0.5
    assert "student.int8.onnx: on" in result.stdout and "points" in result.stdout

    import onnx
    model = onnx.load(str(out / "student.int8.onnx"))
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)

    predicted = tmp_path / "int8"
    run_cli("nnkd_predict", "-i", deployed["images"], "-o", predicted, *STUDENT, "--method", "logit",
            "--onnx", out / "student.int8.onnx", *FAST, env=deployed["env"])
    ours, int8 = _labels(deployed["root"] / "nnkd"), _labels(predicted)
    assert ours.keys() == int8.keys()
    assert np.mean([np.mean(ours[n] == int8[n]) for n in ours]) > 0.5


def test_int8_needs_onnx_and_a_calibration_set(deployed, tmp_path, monkeypatch):
    result = refuse_in_process("nnkd_export", *STUDENT, "--method", "logit", "-o", tmp_path / "m", "--int8",
                               env=deployed["env"])
    assert "--int8 quantizes the exported ONNX model" in _error_line(result) and not (tmp_path / "m").exists()

    from nnkd.errors import NnkdError
    from nnkd.inference.quantize import fold_cases

    plans = {"configurations": {"3d_fullres": {"data_identifier": "missing_identifier"}}}  # its data is gone
    monkeypatch.setenv("nnUNet_preprocessed", deployed["env"]["nnUNet_preprocessed"])
    with pytest.raises(NnkdError, match="no preprocessed training case of fold 0"):
        fold_cases("Dataset991_Synthetic", plans, "3d_fullres", "0")


def test_int8_calibration_patch_by_patch_gives_the_ranges_of_all_patches_at_once(tmp_path):
    """quantize_student merges the min/max of one patch at a time (ONNX Runtime's strided calibration, so a
    full-size 3D network's activations of 16 patches never sit in memory together): the same model as calibrating
    on all patches in one go."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from nnkd.inference.onnx_export import export_onnx
    from nnkd.inference.quantize import QUANTIZED_OPS, edge_convolutions, quantize_student

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.LeakyReLU(),
                                  torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.InstanceNorm3d(4, affine=True),
                                  torch.nn.LeakyReLU(), torch.nn.Conv3d(4, 3, 1))
    fp32 = tmp_path / "net.onnx"
    export_onnx(network, 1, (8, 16, 16), fp32)
    rng = np.random.default_rng(0)
    patches = [rng.normal(scale=s, size=(1, 1, 8, 16, 16)).astype(np.float32) for s in (0.5, 1, 3, 2)]
    kept_float = quantize_student(fp32, tmp_path / "strided.onnx", patches)

    # the convolution that reads the image and the one that writes the logits stay float, the middle one is int8
    quantized = onnx.load(str(tmp_path / "strided.onnx")).graph
    dequantized = {n.output[0] for n in quantized.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in quantized.node if n.op_type == "Conv"]
    assert len(convs) == 3 and kept_float == [convs[0].name, convs[2].name]
    assert [bool(set(c.input) & dequantized) for c in convs] == [False, True, False]

    class AllAtOnce(CalibrationDataReader):
        items = iter([{"input": p} for p in patches])

        def get_next(self):
            return next(self.items, None)

    quant_pre_process(str(fp32), str(tmp_path / "prepared.onnx"), skip_symbolic_shape=True)
    quantize_static(str(tmp_path / "prepared.onnx"), str(tmp_path / "all.onnx"), AllAtOnce(),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
                    nodes_to_exclude=edge_convolutions(onnx.load(str(tmp_path / "prepared.onnx"))))

    def initializers(path):
        return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}

    strided, together = initializers(tmp_path / "strided.onnx"), initializers(tmp_path / "all.onnx")
    assert strided.keys() == together.keys() and any("scale" in k for k in strided)
    for name, value in strided.items():
        np.testing.assert_array_equal(value, together[name], err_msg=name)
    quantize_student(fp32, tmp_path / "last.onnx", patches[-1:])
    only_last = initializers(tmp_path / "last.onnx")  # the ranges do depend on every patch
    assert any(not np.array_equal(v, only_last[k]) for k, v in strided.items() if "scale" in k)



_FAULTS = r"""
import resource, sys, torch
from nnkd.devices import resolve_device
resolve_device("cpu")
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.LeakyReLU(), torch.nn.Conv3d(8, 4, 1)).eval()
x = torch.randn(1, 1, 48, 128, 128)  # 8 × 786,432 voxels × 4 bytes: 24 MiB per activation, above glibc's threshold
faults = []
with torch.inference_mode():
    for _ in range(10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[6:]))  # once the heap has grown to the passes' peak
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc's malloc")
def test_cpu_passes_reuse_freed_memory_instead_of_faulting_in_fresh_pages(tmp_path):
    """A network pass on the CPU after the first ones takes no fresh pages from the kernel (nnkd's malloc setting,
    applied by resolve_device: nnkd_predict, training, latency planning); with the setting off every pass faults
    in its activations again. Counted page faults, not time."""
    import os
    import subprocess
    import sys

    def faults(**env) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS], env={**os.environ, **env}, capture_output=True,
                             text=True, check=True)
        return int(out.stdout.split()[-1])

    kept, default = faults(), faults(nnkd_keep_freed_memory="0")
    assert default > 5000, default  # 24 MiB activations: ~6,000 pages each, faulted in on every pass
    assert kept < default / 20, (kept, default)
