"""nnkd_pseudo_label: a raw dataset whose labels are a teacher's segmentations, usable by nnU-Net's planning."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import PLANNED_ID, make_env, run_cli, tree_digest, refuse_in_process

SOURCE_ID, TARGET_ID = 981, 982


class BrightIsForeground(torch.nn.Module):
    """Logits (background, bright): class 1 wherever the (z-scored) image is above 0.25."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x - 0.25], 1)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pseudo")
    env = make_env(root)
    run_cli("nnkd_make_synthetic", "-d", SOURCE_ID, "--cases", "4", "--test-cases", "2", "--shape", "24", "24", "24",
            env=env)
    model = root / "bright.pt"
    torch.jit.save(torch.jit.script(BrightIsForeground().eval()), str(model))
    raw = Path(env["nnUNet_raw"])
    return {"env": env, "raw": raw, "folder": raw / f"Dataset{SOURCE_ID}_Synthetic",
            "teacher": f"torchscript:{model}?labels=background,bright&probe=8", "before": tree_digest(raw)}


def test_a_teacher_labels_a_new_dataset_that_nnunet_plans(source):
    env, folder = source["env"], source["folder"]
    result = run_cli("nnkd_pseudo_label", "-d", TARGET_ID, "--from-dataset", SOURCE_ID, "--name", "Bright",
                     "--teacher", source["teacher"], "--device", "cpu", env=env)
    target = source["raw"] / f"Dataset{TARGET_ID}_Bright"
    assert str(target) in result.stdout
    dataset_json = json.loads((target / "dataset.json").read_text())
    source_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "bright": 1}
    assert dataset_json["channel_names"] == source_json["channel_names"]
    assert dataset_json["numTraining"] == 4 and dataset_json["file_ending"] == ".nii.gz"
    manifest = json.loads((target / "nnkd_pseudo_labels.json").read_text())
    assert manifest["teacher"] == source["teacher"] and len(manifest["cases"]) == 6
    for split, n in (("Tr", 4), ("Ts", 2)):
        labels = sorted((target / f"labels{split}").iterdir())
        assert len(labels) == n
        for label_file in labels:
            case = label_file.name[: -len(".nii.gz")]
            image_file = folder / f"images{split}" / f"{case}_0000.nii.gz"
            assert (target / f"images{split}" / image_file.name).read_bytes() == image_file.read_bytes()
            image, label = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(label_file))
            assert label.GetSize() == image.GetSize() and label.GetSpacing() == image.GetSpacing()
            assert label.GetOrigin() == image.GetOrigin() and label.GetDirection() == image.GetDirection()
            array = sitk.GetArrayFromImage(image).astype(np.float32)
            expected = (array - array.mean()) / array.std() > 0.25  # the whole case z-scored, then the teacher
            got = sitk.GetArrayFromImage(label)
            assert np.mean(got == expected) > 0.999
            assert manifest["cases"][case]["foreground"]["bright"] == pytest.approx(float(np.mean(got == 1)))
    assert tree_digest(folder) == {k[len(folder.name) + 1:]: v for k, v in source["before"].items()}
    planned = run_cli("nnkd_plan_and_preprocess", "-d", TARGET_ID, "-c", "3d_fullres", "--budget", "tiny", "-np", "1",
                      "--no_pp", env=env)
    assert "nnKDPlans_tiny" in planned.stdout


def test_an_nnunet_teacher_predicts_with_its_own_pipeline(teacher, tmp_path):
    """An nnU-Net model folder segments the images as nnUNetv2_predict would; channel names and labels are its."""
    env = make_env(tmp_path)
    images = Path(teacher["env"]["nnUNet_raw"]) / f"Dataset{PLANNED_ID}_Synthetic" / "imagesTs"
    before = tree_digest(images)
    run_cli("nnkd_pseudo_label", "-d", TARGET_ID, "-i", images, "--teacher", teacher["spec"], "--disable_tta",
            "--device", "cpu", env=env)
    target = Path(env["nnUNet_raw"]) / f"Dataset{TARGET_ID}_PseudoLabels"
    teacher_json = json.loads((teacher["folder"] / "dataset.json").read_text())
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert dataset_json["labels"] == teacher_json["labels"]
    assert dataset_json["channel_names"] == teacher_json["channel_names"]
    manifest = json.loads((target / "nnkd_pseudo_labels.json").read_text())
    assert "folds 0, without mirroring" in manifest["how"]
    cases = sorted(p.name for p in (target / "labelsTr").iterdir())
    assert cases and len(cases) == len(list(images.iterdir()))
    for case in cases:
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(target / "labelsTr" / case)))
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(images / case.replace(".nii.gz", "_0000.nii.gz"))))
        assert label.shape == image.shape and set(np.unique(label)) <= set(teacher_json["labels"].values())
    assert tree_digest(images) == before


@pytest.mark.parametrize("args, message", [
    (["--labels", "background", "a", "b"], "--labels names 3 classes, the teacher has 2"),
    (["--labels", "brain", "background"], "must start with background"),
    (["-d", str(SOURCE_ID)], f"dataset ID {SOURCE_ID} is already used by Dataset{SOURCE_ID}_Synthetic"),
    (["--test-images", "."], "test images go with a folder of images"),
])
def test_bad_requests_stop_with_one_line_and_write_nothing(source, args, message):
    raw = source["raw"]
    before = sorted(p.name for p in raw.iterdir())
    result = run_cli("nnkd_pseudo_label", "-d", TARGET_ID + 1, "--from-dataset", SOURCE_ID, "--teacher",
                     source["teacher"], "--device", "cpu", *args, env=source["env"], check=False)
    assert result.returncode != 0
    assert message in result.stderr and result.stderr.count("nnkd: error:") == 1
    assert sorted(p.name for p in raw.iterdir()) == before


def test_a_missing_image_folder_is_named(source, tmp_path):
    result = refuse_in_process("nnkd_pseudo_label", "-d", TARGET_ID + 2, "-i", tmp_path / "nowhere", "--teacher",
                               source["teacher"], env=source["env"])
    assert result.returncode != 0 and "nowhere not found" in result.stderr


def test_a_killed_run_resumes_where_it_stopped(source, monkeypatch, capsys):
    """Cases labelled before an interruption are kept in the hidden staging folder and skipped by the rerun; the
    finished dataset equals one made in a single run."""
    from nnkd.pipeline import pseudo_labels
    from nnkd.pipeline.pseudo_labels import PseudoLabelRequest, pseudo_label

    monkeypatch.setenv("nnUNet_raw", str(source["raw"]))
    request = PseudoLabelRequest(dataset_id=TARGET_ID + 3, teacher=source["teacher"], source_dataset=SOURCE_ID,
                                 name="Resumed", device="cpu")
    calls = []
    original = pseudo_labels.WholeCaseTeacher.__call__

    def interrupted(self, files, output):
        calls.append(files)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, files, output)

    monkeypatch.setattr(pseudo_labels.WholeCaseTeacher, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pseudo_label(request)
    target = source["raw"] / f"Dataset{TARGET_ID + 3}_Resumed"
    assert not target.exists() and (source["raw"] / f".{target.name}.partial").is_dir()
    monkeypatch.setattr(pseudo_labels.WholeCaseTeacher, "__call__", original)
    capsys.readouterr()
    pseudo_label(request)
    assert "2 of 4 Tr case(s) already labelled" in capsys.readouterr().out
    assert not (source["raw"] / f".{target.name}.partial").exists()
    single = source["raw"] / f"Dataset{TARGET_ID + 4}_Single"
    pseudo_label(PseudoLabelRequest(dataset_id=TARGET_ID + 4, teacher=source["teacher"], source_dataset=SOURCE_ID,
                                    name="Single", device="cpu"))
    assert tree_digest(target).keys() == tree_digest(single).keys()
    for name in ("labelsTr", "labelsTs"):
        for file in (single / name).iterdir():
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(file)))
            assert np.array_equal(a, sitk.GetArrayFromImage(sitk.ReadImage(str(target / name / file.name))))
    assert json.loads((target / "nnkd_pseudo_labels.json").read_text())["cases"] == \
        json.loads((single / "nnkd_pseudo_labels.json").read_text())["cases"]


def test_an_unfinished_run_of_another_request_is_discarded(source, monkeypatch, capsys):
    from nnkd.pipeline.pseudo_labels import PARTIAL, PseudoLabelRequest, pseudo_label

    monkeypatch.setenv("nnUNet_raw", str(source["raw"]))
    staging = source["raw"] / f".Dataset{TARGET_ID + 5:03d}_Other.partial"
    (staging / "labelsTr").mkdir(parents=True)
    (staging / "labelsTr" / "stale.nii.gz").write_bytes(b"from another teacher")
    (staging / PARTIAL).write_text(json.dumps({"teacher": "deepbet", "source": "elsewhere"}))
    target = pseudo_label(PseudoLabelRequest(dataset_id=TARGET_ID + 5, teacher=source["teacher"],
                                             source_dataset=SOURCE_ID, name="Other", device="cpu"))
    assert "holds an unfinished run of another request; starting over" in capsys.readouterr().out
    assert not (target / "labelsTr" / "stale.nii.gz").exists() and len(list((target / "labelsTr").iterdir())) == 4
