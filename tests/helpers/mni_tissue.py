"""A small real-anatomy nnU-Net dataset: crops of nilearn's MNI152 T1 (shipped in its wheel, 2 mm) with
gray/white matter labels from the MNI152 tissue maps. The template is skull-stripped, so it serves tissue
classes, not brain extraction; deepbet teaches it through features."""

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

LABELS = {"background": 0, "gray_matter": 1, "white_matter": 2}


def _save(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(path))


def write_mni_tissue_dataset(raw_root: Path, dataset_id: int, cases: int = 6, crop=(48, 56, 48)) -> Path:
    from nilearn import datasets

    t1, gm, wm = (f(resolution=2).get_fdata().astype(np.float32) for f in (
        datasets.load_mni152_template, datasets.load_mni152_gm_template, datasets.load_mni152_wm_template))
    labels = np.where((gm > 0.5) & (gm >= wm), 1, np.where(wm > 0.5, 2, 0)).astype(np.uint8)
    folder = raw_root / f"Dataset{dataset_id:03d}_MNITissue"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(cases):
        start = [rng.integers(10, s - c - 10) for s, c in zip(t1.shape, crop)]
        box = tuple(slice(b, b + c) for b, c in zip(start, crop))
        image, label = t1[box], labels[box]
        if rng.random() < 0.5:
            image, label = image[::-1], label[::-1]
        image = image ** rng.uniform(0.8, 1.25) * rng.uniform(50, 150) + rng.normal(0, 2, image.shape)
        _save(np.ascontiguousarray(image.astype(np.float32)), folder / "imagesTr" / f"mni_{i:03d}_0000.nii.gz")
        _save(np.ascontiguousarray(label), folder / "labelsTr" / f"mni_{i:03d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": LABELS, "numTraining": cases, "file_ending": ".nii.gz",
        "name": "MNITissue", "description": "crops of the MNI152 2 mm T1 with GM/WM labels (nilearn)"}))
    return folder
