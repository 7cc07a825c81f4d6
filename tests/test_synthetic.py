import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SMALL, run_cli, tree_digest, refuse_in_process
from nnkd.datasets.synthetic import LABELS, SyntheticSpec, write_synthetic_dataset
from nnkd.errors import NnkdError


def _read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def test_dataset_passes_nnunet_integrity_check(nnunet_env, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    run_cli("nnkd_make_synthetic", "-d", 990, *SMALL, env=nnunet_env)
    folder = tmp_path / "nnUNet_raw" / "Dataset990_Synthetic"
    verify_dataset_integrity(str(folder), 1)  # raises on any problem
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["numTraining"] == 8 and dataset["file_ending"] == ".nii.gz"
    assert len(list((folder / "imagesTr").glob("*.nii.gz"))) == 8
    assert len(list((folder / "imagesTs").glob("*.nii.gz"))) == 2


def test_cases_have_every_class_varied_sizes_and_anisotropic_spacing(tmp_path):
    folder = write_synthetic_dataset(SyntheticSpec(990, cases=6), tmp_path)
    shapes = set()
    for label_file in sorted((folder / "labelsTr").glob("*.nii.gz")):
        label, spacing = _read(label_file)
        image, image_spacing = _read(folder / "imagesTr" / label_file.name.replace(".nii.gz", "_0000.nii.gz"))
        assert image.shape == label.shape and image.dtype == np.float32
        assert set(np.unique(label)) == set(LABELS.values())
        assert np.allclose(spacing, image_spacing) and spacing[2] > 2 * spacing[0]  # z coarser than x/y
        shapes.add(label.shape)
        assert all(abs(s - d) <= 0.2 * d for s, d in zip(label.shape, (48, 64, 64)))
    assert len(shapes) == 6


def test_lesion_needs_context_intensity_alone_does_not_separate_it(tmp_path):
    """The lesion's intensity overlaps the background's: only its position inside the organ tells it."""
    folder = write_synthetic_dataset(SyntheticSpec(990, cases=2, shape=(32, 32, 32)), tmp_path)
    image, _ = _read(folder / "imagesTr" / "case_000_0000.nii.gz")
    label, _ = _read(folder / "labelsTr" / "case_000.nii.gz")
    lesion, background = image[label == 2], image[(label == 0) & (image > 100)]
    assert abs(np.median(lesion) - np.median(background)) < np.std(background) + np.std(lesion)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    spec = SyntheticSpec(990, cases=3, shape=(24, 32, 32), seed=5)
    a = tree_digest(write_synthetic_dataset(spec, tmp_path / "a"))
    b = tree_digest(write_synthetic_dataset(spec, tmp_path / "b"))
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    c = tree_digest(write_synthetic_dataset(SyntheticSpec(990, cases=3, shape=(24, 32, 32), seed=6), tmp_path / "c"))
    assert a["imagesTr/case_000_0000.nii.gz"][0] != c["imagesTr/case_000_0000.nii.gz"][0]


def test_refuses_to_overwrite_unless_asked(nnunet_env, tmp_path):
    run_cli("nnkd_make_synthetic", "-d", 990, *SMALL, env=nnunet_env)
    folder = tmp_path / "nnUNet_raw" / "Dataset990_Synthetic"
    before = tree_digest(folder)
    result = refuse_in_process("nnkd_make_synthetic", "-d", 990, *SMALL, "--seed", "1", env=nnunet_env)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("nnkd: error:") and "--overwrite" in result.stderr
    assert tree_digest(folder) == before
    run_cli("nnkd_make_synthetic", "-d", 990, *SMALL, "--seed", "1", "--overwrite", env=nnunet_env)
    assert tree_digest(folder) != before
    assert [p.name for p in folder.parent.iterdir()] == ["Dataset990_Synthetic"]  # no temp folders left


def test_refuses_an_id_used_by_another_dataset(nnunet_env, tmp_path):
    (tmp_path / "nnUNet_raw" / "Dataset990_Other").mkdir(parents=True)
    result = refuse_in_process("nnkd_make_synthetic", "-d", 990, *SMALL, "--overwrite", env=nnunet_env)
    assert result.returncode != 0 and "Dataset990_Other" in result.stderr


def test_two_dimensional_multichannel_dataset(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder = write_synthetic_dataset(SyntheticSpec(992, cases=4, channels=2, dim=2, shape=(48, 40)), tmp_path)
    verify_dataset_integrity(str(folder), 1)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T1", "1": "T2"}
    t1, _ = _read(folder / "imagesTr" / "case_000_0000.nii.gz")
    t2, _ = _read(folder / "imagesTr" / "case_000_0001.nii.gz")
    assert t1.shape == t2.shape and t1.shape[0] == 1
    assert not np.allclose(t1, t2)  # each channel has its own contrast


@pytest.mark.parametrize("args, message", [
    (["--shape", "32", "32"], "--shape has 2 values"),
    (["--cases", "1"], "too few"),
    (["--dim", "4"], "invalid choice"),
    (["--name", "bad__name"], "invalid"),
])
def test_bad_arguments_give_one_error_line(nnunet_env, args, message):
    result = refuse_in_process("nnkd_make_synthetic", "-d", 990, *args, env=nnunet_env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr


def test_default_shape_gives_a_realistic_nnunet_plan(nnunet_env, tmp_path):
    """At 48×64×64 nnU-Net's own 3d_fullres plan has 5+ stages and 10M+ parameters."""
    run_cli("nnkd_make_synthetic", "-d", 990, env=nnunet_env)
    run_cli("nnkd_plan_and_preprocess", "-d", 990, "-c", "3d_fullres", "--budget", "tiny", "-np", "1",
            "--no_pp", env=nnunet_env)
    folder = tmp_path / "nnUNet_preprocessed" / "Dataset990_Synthetic"
    teacher = json.loads((folder / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
    student = json.loads((folder / "nnKDPlans_tiny.json").read_text())["configurations"]["3d_fullres"]
    assert teacher["architecture"]["arch_kwargs"]["n_stages"] >= 5
    assert student["nnkd_student"]["teacher_params"] >= 10_000_000
    assert not (folder / "nnUNetPlans_3d_fullres").exists()  # --no_pp: nothing preprocessed


def test_the_multiorgan_preset_has_a_capacity_gap_task_in_3d_and_2d(tmp_path):
    """Eleven structures, sizes over about three orders of magnitude in 3D, left/right pairs that only position
    tells apart, shapes that vary between cases; a 2D case is the central slice of the same anatomy."""
    from nnkd.datasets import multiorgan
    from nnkd.datasets.synthetic import make_case

    spec = SyntheticSpec(980, preset="multiorgan", cases=2, shape=(32, 96, 96))
    assert list(spec.dataset_labels) == ["background", *multiorgan.STRUCTURES] and len(multiorgan.STRUCTURES) >= 8
    labels = [make_case(np.random.default_rng([0, 0, i]), spec)[1] for i in range(3)]
    for label in labels:
        counts = np.bincount(label.ravel(), minlength=12)[1:]
        assert (counts > 0).all(), counts  # every structure in every case
        assert counts.max() / counts.min() > 300  # liver against an adrenal gland
    assert not np.array_equal(labels[0] > 0, labels[1] > 0)  # anatomy varies between cases
    left, right = spec.dataset_labels["kidney_left"], spec.dataset_labels["kidney_right"]
    x = np.arange(labels[0].shape[2])
    centre = (labels[0].shape[2] - 1) / 2
    for label in labels:  # the pair sits on mirrored sides: x > centre is the patient's left
        assert x[np.nonzero(label == left)[2]].mean() > centre > x[np.nonzero(label == right)[2]].mean()
    tissue = multiorgan.CONTRAST  # same tissue intensity for a pair; overlapping neighbours
    assert tissue[left] == tissue[right] and tissue[multiorgan.LABELS["adrenal_left"]] == tissue[multiorgan.LABELS["adrenal_right"]]
    assert abs(tissue[multiorgan.LABELS["liver"]] - tissue[multiorgan.LABELS["spleen"]]) < 0.05
    assert abs(tissue[multiorgan.LABELS["pancreas"]] - tissue[multiorgan.BOWEL]) < 0.05

    flat = SyntheticSpec(981, preset="multiorgan", dim=2, cases=2, shape=(96, 96))
    folder = write_synthetic_dataset(flat, tmp_path)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["nnkd_synthetic"]["preset"] == "multiorgan" and len(dataset["labels"]) == 12
    label, spacing = _read(folder / "labelsTr" / "case_000.nii.gz")
    assert label.shape[0] == 1 and len(np.unique(label)) == 12 and spacing == (1.0, 1.0, 999.0)
    only = SyntheticSpec(982, preset="multiorgan", cases=2, shape=(32, 64, 64), labels=("liver", "vessels"))
    assert only.dataset_labels == {"background": 0, "liver": 1, "vessels": 2}
    with pytest.raises(NnkdError, match="not a set of structures"):
        SyntheticSpec(983, preset="multiorgan", labels=("organ",))
    with pytest.raises(NnkdError, match="--preset"):
        SyntheticSpec(983, preset="brain")
