"""TS-KD transfer sets: unlabelled images preprocessed like nnU-Net's, synthetic cases from nnkd_synthesize, both
read by nnU-Net's own dataset class and data loader."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetBlosc2

from conftest import PLANNED_ID, make_env, run_cli, tree_digest, refuse_in_process
from nnkd.datasets.synthesis import SynthesisRequest, synthesize
from nnkd.datasets.transfer import PreprocessedConfiguration, TransferSet, add_unlabeled, list_transfer_sets
from nnkd.errors import NnkdError

NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
SETS = Path("Dataset991_Synthetic") / "nnkd_transfer" / "nnUNetPlans__nnUNetPlans_3d_fullres"
QUICK_SYNTHESIS = ["-d", PLANNED_ID, "--epochs", "1", "--steps-per-epoch", "2", "--inference-steps", "2",
                   "--device", "cpu"]


@pytest.fixture(scope="module")
def env(planned, tmp_path_factory) -> dict:
    """A private copy of the planned dataset, so the sets written here are seen by no other test."""
    root = tmp_path_factory.mktemp("transfer")
    env = make_env(root)
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(planned["env"][name], env[name], dirs_exist_ok=True)
    return env


@pytest.fixture
def in_process(env, monkeypatch) -> dict:
    """The private copy's nnU-Net folder variables, for calls in this process."""
    for name in NNUNET_FOLDERS:
        monkeypatch.setenv(name, env[name])
    return env


def preprocessed(env) -> Path:
    return Path(env["nnUNet_preprocessed"])


def copy_images(env, target: Path, renames: dict[str, str]) -> Path:
    """Training images of the planned dataset under new names: {source file name: new file name}."""
    target.mkdir(parents=True, exist_ok=True)
    images = Path(env["nnUNet_raw"]) / "Dataset991_Synthetic" / "imagesTr"
    for source, name in renames.items():
        shutil.copy(images / source, target / name)
    return target


@pytest.fixture(scope="module")
def unlabeled(env, tmp_path_factory):
    """Two training images added as an unlabelled set, as `extra_000` and `extra_001`."""
    images = copy_images(env, tmp_path_factory.mktemp("unlabeled"), {
        "case_000_0000.nii.gz": "extra_000_0000.nii.gz", "case_001_0000.nii.gz": "extra_001_0000.nii.gz"})
    raw_before = tree_digest(Path(env["nnUNet_raw"]))
    with pytest.MonkeyPatch.context() as mp:
        for name in NNUNET_FOLDERS:
            mp.setenv(name, env[name])
        folder = add_unlabeled(PLANNED_ID, images)
    return {"set": TransferSet(folder), "images": images, "raw_before": raw_before}


def test_unlabeled_cases_match_nnunets_own_preprocessing(env, unlabeled):
    tset = unlabeled["set"]
    assert tset.folder == preprocessed(env) / SETS / "unlabeled"
    regular_folder = preprocessed(env) / "Dataset991_Synthetic" / "nnUNetPlans_3d_fullres"
    assert infer_dataset_class(str(tset.folder)) is infer_dataset_class(str(regular_folder)) is nnUNetDatasetBlosc2
    ours, regular = nnUNetDatasetBlosc2(str(tset.folder)), nnUNetDatasetBlosc2(str(regular_folder))
    assert [c for c in ours.identifiers if c.startswith("extra_")] == ["extra_000", "extra_001"]  # others: test_tskd
    for case, source in (("extra_000", "case_000"), ("extra_001", "case_001")):
        data, seg, _, properties = ours.load_case(case)
        expected_data, _, _, expected_properties = regular.load_case(source)
        np.testing.assert_allclose(data[:], expected_data[:], atol=1e-5)  # same spacing, crop and z-scoring
        assert properties["spacing"] == expected_properties["spacing"]
        assert properties["shape_before_cropping"] == expected_properties["shape_before_cropping"]
        assert set(np.unique(seg[:])) <= {-1, 0}
        assert properties["class_locations"].keys() == expected_properties["class_locations"].keys()
        assert all(len(v) == 0 for v in properties["class_locations"].values())
    manifest = json.loads((tset.folder / "nnkd" / "transfer.json").read_text())
    assert (manifest["kind"], manifest["count"], manifest["plans"]) == ("unlabeled", 2, "nnUNetPlans")
    assert tree_digest(Path(env["nnUNet_raw"])) == unlabeled["raw_before"]


def test_unlabeled_rerun_skips_existing_cases(in_process, unlabeled, capsys):
    def case_files():
        return {k: v for k, v in tree_digest(unlabeled["set"].folder).items() if not k.startswith("nnkd/")}

    before = case_files()
    add_unlabeled(PLANNED_ID, unlabeled["images"])
    assert "2 of 2 case(s) already" in capsys.readouterr().out
    assert case_files() == before and len(before) == 6


@pytest.mark.parametrize("files, message", [
    ({"case_000_0000.nii.gz": "other_0001.nii.gz"}, "channel"),
    ({"case_000_0000.nii.gz": "other_0000.nii.gz", "case_001_0000.nii.gz": "other_0001.nii.gz"}, "channel"),
    ({"case_000_0000.nii.gz": "good_0000.nii.gz", "case_001_0000.nii.gz": "bad_0000.nii.gz"},
     "bad_0000.nii.gz is not a readable image"),
])
def test_bad_unlabeled_images_stop_before_anything_is_written(in_process, tmp_path, files, message):
    images = copy_images(in_process, tmp_path / "images", files)
    if "bad" in message:
        (images / "bad_0000.nii.gz").write_bytes(b"not an image")
    with pytest.raises(NnkdError, match=message) as error:
        add_unlabeled(PLANNED_ID, images, name="rejected")
    assert "\n" not in str(error.value)
    assert not (preprocessed(in_process) / SETS / "rejected").exists()


@pytest.fixture(scope="module")
def synthetic(env):
    """nnkd_synthesize run for 3 cases, then again for 5; what each run printed and left on disk."""
    folder = preprocessed(env) / SETS / "synthetic"
    first = run_cli("nnkd_synthesize", *QUICK_SYNTHESIS, "--size", 16, 16, 16, "-n", 3, env=env)
    after_first = tree_digest(folder)
    second = run_cli("nnkd_synthesize", *QUICK_SYNTHESIS, "--size", 16, 16, 16, "-n", 5, env=env)
    return {"folder": folder, "first": first, "after_first": after_first, "second": second}


def test_synthesize_writes_cases_that_nnunet_loads(env, synthetic):
    folder = synthetic["folder"]
    assert "training the diffusion model" in synthetic["first"].stdout
    assert infer_dataset_class(str(folder)) is nnUNetDatasetBlosc2
    dataset = nnUNetDatasetBlosc2(str(folder))
    assert dataset.identifiers == [f"synth_{i:05d}" for i in range(5)]
    plans = json.loads((preprocessed(env) / "Dataset991_Synthetic" / "nnUNetPlans.json").read_text())
    ranges = json.loads((folder / "nnkd" / "transfer.json").read_text())["made_with"]["intensity_range"]
    for case in dataset.identifiers:
        data, seg, _, properties = dataset.load_case(case)
        assert data.shape == seg.shape == (1, 16, 16, 16)
        low, high = ranges[0]
        assert np.isfinite(data[:]).all() and low - 1e-4 <= data[:].min() <= data[:].max() <= high + 1e-4
        assert not seg[:].any()
        assert properties["spacing"] == pytest.approx(plans["configurations"]["3d_fullres"]["spacing"])
    manifest = json.loads((folder / "nnkd" / "transfer.json").read_text())
    assert (manifest["kind"], manifest["count"]) == ("synthetic", 5)
    png = folder / "nnkd" / "samples.png"
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 1000


def test_synthesize_rerun_reuses_the_model_and_adds_only_missing_cases(synthetic):
    assert "reusing the diffusion model" in synthetic["second"].stdout
    assert "training the diffusion model" not in synthetic["second"].stdout
    assert "Diffusion epoch" not in synthetic["second"].stderr
    now = tree_digest(synthetic["folder"])
    kept = [k for k in synthetic["after_first"] if k.startswith("synth_") or k == "nnkd/diffusion.pt"]
    assert len(kept) == 10 and all(now[k] == synthetic["after_first"][k] for k in kept)
    assert len([k for k in now if k.startswith("synth_")]) == 15


def test_checkpoint_trained_otherwise_is_not_silently_reused(in_process, synthetic):
    request = SynthesisRequest(dataset=str(PLANNED_ID), count=6, size=(16, 16, 16), epochs=2, steps_per_epoch=2,
                               inference_steps=2, device="cpu")
    with pytest.raises(NnkdError, match="was trained with"):
        synthesize(request)
    assert len(list(synthetic["folder"].glob("synth_*.pkl"))) == 5


def test_synthesize_refuses_bad_input_in_one_line(in_process):
    result = refuse_in_process("nnkd_synthesize", *QUICK_SYNTHESIS, "-n", 1, "--size", "15", "16", "16", "--name",
                               "odd", env=in_process)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "nnkd: error: --size 15 16 16 is not divisible" in result.stderr
    assert not (preprocessed(in_process) / SETS / "odd").exists()
    with pytest.raises(NnkdError, match="inside nnUNet_raw"):
        synthesize(SynthesisRequest(dataset=str(PLANNED_ID), count=1, output=Path(in_process["nnUNet_raw"]) / "x"))


@pytest.mark.parametrize("through", ["nnU-Net's dataset class", "the tskd trainer's TransferDataset"])
def test_nnunet_loader_draws_batches_of_the_plans_patch_size(in_process, unlabeled, synthetic, through):
    from nnkd.trainers.transfer_batches import TransferDataset

    config = PreprocessedConfiguration.load(PLANNED_ID, "nnKDPlans_tiny", "3d_fullres")  # students share the sets
    sets = list_transfer_sets(PLANNED_ID, "nnKDPlans_tiny", "3d_fullres")
    assert [(s.name, s.kind, len(s.cases())) for s in sets] == [("synthetic", "synthetic", 5),
                                                                 ("unlabeled", "unlabeled", 2)]
    data = sets[0].open() if through.startswith("nnU-Net") else TransferDataset([s.folder for s in sets])
    patch = config.configuration_manager.patch_size
    label_manager = config.plans_manager.get_label_manager(config.dataset_json)
    loader = nnUNetDataLoader(data, 4, patch, patch, label_manager, oversample_foreground_percent=0.5)
    for _ in range(3):
        batch = next(loader)
        assert tuple(batch["data"].shape) == (4, 1, *patch) and tuple(batch["target"].shape) == (4, 1, *patch)
        assert set(batch["target"].unique().tolist()) <= {-1, 0} and batch["data"].abs().sum() > 0
    with open(sets[0].folder / "synth_00000.pkl", "rb") as f:
        assert pickle.load(f)["nnkd_transfer"] == "synthetic"
