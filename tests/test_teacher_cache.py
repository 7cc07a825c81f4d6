"""nnkd_cache_teacher and nnkd_train --teacher-cache: exact soft labels, aligned through augmentation,
no teacher at training time, corrupt and stale entries detected."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PLANNED_ID, QUICK_TRAINING, run_cli, run_clis, run_fold, refuse_in_process
from nnkd.cache.store import CacheSettings, TeacherCache, cache_folder
from nnkd.distill.logits import kd_kl_loss, logits_from_probabilities
from nnkd.checkpoints import load_checkpoint

CACHE = ["-d", str(PLANNED_ID), "-c", "3d_fullres", "-f", "0", "--device", "cpu"]


class _Teacher:
    spec, checkpoint_path, checkpoint_sha256 = "test", None, "sha"


@pytest.mark.parametrize("settings, tolerance", [(CacheSettings(dtype="float32"), 1e-6), (CacheSettings(), 1e-3),
                                                 (CacheSettings(topk=2), 0.3), (CacheSettings(resolution="half"), 0.2)])
def test_stored_probabilities_read_back_lazily_by_region(tmp_path, settings, tolerance):
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (9, 12, 14)], indexing="ij"))
    probabilities = torch.softmax(torch.from_numpy(np.concatenate([grid, -grid.sum(0, keepdims=True)]) * 3), 0).numpy()
    cache = TeacherCache(tmp_path / "cache")
    cache.start(_Teacher(), settings, {"a": 0, "b": 1, "c": 2, "d": 3}, False, (8, 8, 8), "3d_fullres")
    cache.write_case("case_000", probabilities.astype(np.float32), "sha")
    reopened = TeacherCache(tmp_path / "cache")
    assert reopened.is_current("case_000", "sha") and not reopened.is_current("case_000", "other")
    region = reopened.open_case("case_000")[:, 2:7, 3:12, 1:14]
    expected = probabilities[:, 2:7, 3:12, 1:14]
    assert region.shape == expected.shape
    assert np.abs(region - expected).max() < tolerance
    assert np.abs(region.sum(0) - 1).max() < 1e-2
    assert (region.argmax(0) == expected.argmax(0)).mean() > 0.95


def test_cache_variants_live_side_by_side_and_training_picks_one_or_asks(tmp_path):
    """Caches of one teacher with other --topk / --resolution / --dtype get folders of their own (no variant
    replaces another); training takes the default settings' cache, or the only one, or the --cache-variant asked
    for, and with several and none asked names them."""
    from types import SimpleNamespace

    from nnkd.cache.store import cache_variants
    from nnkd.errors import NnkdError
    from nnkd.run.train import TrainRequest, _cache_of, check_request
    from nnkd.trainers.methods import METHODS

    assert CacheSettings().variant == "" and CacheSettings(topk=2, resolution="half").variant == "top2-half"
    for settings in (CacheSettings(), CacheSettings(dtype="float32"), CacheSettings(topk=3, resolution="half",
                                                                                    dtype="float32")):
        assert CacheSettings.from_variant(settings.variant) == settings
    for bad in ("top0", "quarter", "top2-bf16"):
        with pytest.raises(NnkdError, match="is not a cache variant"):
            CacheSettings.from_variant(bad)
    labels = {"a": 0, "b": 1, "c": 2}
    config = SimpleNamespace(folder=tmp_path, configuration_manager=SimpleNamespace(data_identifier="plans_3d"))
    folders = {}
    for settings in (CacheSettings(topk=2), CacheSettings(resolution="half"), CacheSettings()):
        folder = cache_folder(tmp_path, "plans_3d", 0, "spec", settings)
        TeacherCache(folder).start(_Teacher(), settings, labels, False, (4, 4, 4), "3d_fullres")
        folders[settings.variant] = folder
        if settings.variant == "half":  # two variants, no default yet: the user chooses
            with pytest.raises(NnkdError, match="has 2 teacher caches for fold 0, with settings half, top2"):
                _cache_of("spec", config, 0, None)
        elif settings.variant == "top2":  # the only one
            assert _cache_of("spec", config, 0, None) == folder
    assert len(set(folders.values())) == 3 and cache_variants(tmp_path, "plans_3d", 0, "spec") == folders
    assert TeacherCache(folders["top2"]).settings == CacheSettings(topk=2)  # not replaced by the later ones
    assert _cache_of("spec", config, 0, None) == folders[""]  # the default settings' cache
    assert _cache_of("spec", config, 0, "top2") == folders["top2"]
    assert cache_variants(tmp_path, "plans_3d", 0, "other spec") == {}
    with pytest.raises(NnkdError, match="--cache-variant top2 chooses a teacher cache"):
        check_request(TrainRequest("990", "3d_fullres", "0", method="logit", teachers=("spec",),
                                   cache_variant="top2"), METHODS["logit"])


def test_two_writers_share_one_cache_and_an_older_single_manifest_cache_is_still_read(tmp_path):
    probabilities = torch.softmax(torch.randn(3, 4, 5, 6), 0).numpy()
    labels, folder = {"a": 0, "b": 1, "c": 2}, tmp_path / "cache"
    first, second = TeacherCache(folder), TeacherCache(folder)  # two parts, opened before either wrote
    for part in (first, second):
        part.start(_Teacher(), CacheSettings(), labels, False, (4, 4, 4), "3d_fullres")
    first.write_case("case_a", probabilities, "sha")
    second.write_case("case_b", probabilities, "sha")
    second.record_size()
    reader = TeacherCache(folder)
    assert sorted(reader.entries()) == ["case_a", "case_b"] and reader.manifest["bytes"] > 0
    assert reader.is_current("case_a", "sha") and reader.is_current("case_b", "sha")

    manifest = json.loads((folder / "cache.json").read_text())  # as nnkd wrote caches before: records inside
    manifest["cases"] = {"case_a": json.loads((folder / "case_a.entry.json").read_text())}
    (folder / "cache.json").write_text(json.dumps(manifest))
    (folder / "case_a.entry.json").unlink()
    older = TeacherCache(folder)
    assert older.is_current("case_a", "sha") and older.open_case("case_a")[:].shape == probabilities.shape
    older.start(_Teacher(), CacheSettings(), labels, False, (4, 4, 4), "3d_fullres")  # moves the records out
    assert "cases" not in json.loads((folder / "cache.json").read_text())
    assert TeacherCache(folder).is_current("case_a", "sha")
    older.start(_Teacher(), CacheSettings(dtype="float32"), labels, False, (4, 4, 4), "3d_fullres")
    assert not TeacherCache(folder).entries() and not list(folder.glob("*.b2nd"))  # other settings: all dropped


def test_log_probabilities_teach_exactly_like_the_logits_they_came_from():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 4, 5, 6, 7) * 2, torch.randn(2, 4, 5, 6, 7)
    stored = logits_from_probabilities(torch.softmax(teacher, 1))
    for temperature in (1.0, 3.0, 10.0):
        assert torch.allclose(kd_kl_loss(student, stored, temperature), kd_kl_loss(student, teacher, temperature),
                              rtol=1e-3)  # up to the 1e-8 probability floor
    regions = logits_from_probabilities(torch.sigmoid(teacher), regions=True)
    assert torch.allclose(kd_kl_loss(student, regions, 3.0, regions=True),
                          kd_kl_loss(student, teacher, 3.0, regions=True), rtol=1e-3)
    mask = torch.zeros(2, 5, 6, 7, dtype=torch.bool)
    mask[:, :2] = True
    assert torch.allclose(kd_kl_loss(student, teacher, 2.0, mask=mask),
                          kd_kl_loss(student[:, :, :2], teacher[:, :, :2], 2.0))


def _cache_of(teacher_spec: str, env: dict) -> TeacherCache:
    preprocessed = Path(env["nnUNet_preprocessed"]) / "Dataset991_Synthetic"
    return TeacherCache(cache_folder(preprocessed, "nnUNetPlans_3d_fullres", 0, teacher_spec))


@pytest.fixture(scope="module")
def cached(teacher, tmp_path_factory):
    """A copy of the session's nnU-Net teacher, cached for fold 0 (the copy can be changed or removed) in three
    parts, as three machines would: part 2 alone first (training from that part refuses), then parts 0 and 1 at
    once into the same folder."""
    copy = tmp_path_factory.mktemp("teacher_copy") / teacher["folder"].name
    shutil.copytree(teacher["folder"], copy)
    spec = f"nnunet:{copy}"
    env = teacher["env"]
    part = run_cli("nnkd_cache_teacher", *CACHE, "--teacher", spec, "-num_parts", "3", "-part_id", "2", env=env)
    results = str(tmp_path_factory.mktemp("partial_results"))
    partial = run_cli("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "logit",
                      "--teacher", spec, "--teacher-cache", *QUICK_TRAINING, check=False,
                      env={**env, "nnUNet_results": results})
    both = run_clis([("nnkd_cache_teacher", [*CACHE, "--teacher", spec, "-num_parts", "3", "-part_id", str(i)], env)
                     for i in (0, 1)], check=True)
    return {"spec": spec, "folder": copy, "env": env, "part": part, "partial": partial, "results": results,
            "stdout": "".join(r.stdout for r in both), "cache": _cache_of(spec, env)}


def test_parts_fill_one_cache_and_training_waits_for_all_of_them(cached):
    assert "part 2 of 0-2" in cached["part"].stdout and "part 2 done; the cache holds" in cached["part"].stdout
    assert cached["partial"].returncode != 0
    assert "lacks or has corrupt entries" in cached["partial"].stderr and "every part" in cached["partial"].stderr
    assert not any(Path(cached["results"]).rglob("teacher.json"))  # refused before the run was recorded
    assert "teacher cache complete" in cached["stdout"]  # whichever part finished last saw every case
    shares = [int(line.split("(part ")[1].split(": ")[1].split(")")[0])
              for line in (cached["part"].stdout + cached["stdout"]).splitlines() if "(part " in line]
    assert sorted(shares) and sum(shares) == len(cached["cache"].entries())


def test_cache_holds_the_online_teachers_softmax_of_each_training_case(cached):
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from nnkd.teachers.registry import create_teacher

    cache = cached["cache"]
    splits = json.loads((cache.folder.parents[1] / "splits_final.json").read_text())
    assert sorted(cache.entries()) == sorted(splits[0]["train"])
    assert "GB before compression" in cached["stdout"] and cache.manifest["bytes"] > 0
    patch = cache.manifest["patch_size"]
    data_folder = cache.folder.parents[1] / "nnUNetPlans_3d_fullres"
    dataset = infer_dataset_class(str(data_folder))(str(data_folder))
    single_tile = [c for c in cache.entries()
                   if all(s <= p for s, p in zip(dataset.load_case(c)[0].shape[1:], patch))]
    assert single_tile, "the test dataset should have a case no larger than the patch"
    teacher = create_teacher(cached["spec"], fold=0)
    for case in single_tile[:2]:
        image = torch.from_numpy(np.asarray(dataset.load_case(case)[0][:], dtype=np.float32))
        padded, slicer = pad_nd_image(image, patch, "constant", {"value": 0}, True)  # as nnU-Net's sliding window
        with torch.no_grad():
            online = torch.softmax(teacher(padded[None]).logits[0], 0)[(slice(None), *slicer[1:])]
        stored = cache.open_case(case)[:, :, :, :]
        assert stored.shape == tuple(online.shape)
        assert np.abs(stored - online.numpy()).max() < 2e-3  # float16


def test_augmented_soft_labels_stay_aligned_with_their_image(planned, tmp_path):
    """A cache whose soft labels are the one-hot ground truth goes through nnU-Net's own training transforms
    (rotation, scaling, mirroring, intensity changes): its argmax must follow the augmented label map."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnkd.cache.loading import CachedTeacherDataset, SoftLabelAugmentation, split_soft_labels

    preprocessed = planned["preprocessed"]
    manager = PlansManager(str(preprocessed / "nnUNetPlans.json"))
    cm = manager.get_configuration("3d_fullres")
    labels = manager.get_label_manager(json.loads((preprocessed / "dataset.json").read_text()))
    data_folder = preprocessed / cm.data_identifier
    dataset = infer_dataset_class(str(data_folder))(str(data_folder))
    cache = TeacherCache(tmp_path / "one_hot")
    cache.start(_Teacher(), CacheSettings(), {}, False, cm.patch_size, "3d_fullres")
    for case in dataset.identifiers:
        seg = np.asarray(dataset.load_case(case)[1][0])
        cache.write_case(case, np.stack([(seg == c) for c in range(labels.num_segmentation_heads)]).astype(np.float32),
                         "sha")
    transforms = nnUNetTrainer.get_training_transforms(cm.patch_size, (-0.5, 0.5), None, (0, 1, 2), False)
    loader = nnUNetDataLoader(CachedTeacherDataset(dataset, cache), 4, cm.patch_size, cm.patch_size, labels,
                              oversample_foreground_percent=0.33, transforms=SoftLabelAugmentation(transforms, 1))
    torch.manual_seed(0)
    np.random.seed(0)
    agreement = []
    for _ in range(6):
        batch = next(loader)
        image, probabilities, valid = split_soft_labels(batch["data"], 1, regions=False)
        assert image.shape[1] == 1 and probabilities.shape[1] == labels.num_segmentation_heads
        raw = batch["data"][:, 1:]
        assert raw.min() >= -1e-4 and raw.max() <= 1 + 1e-4  # intensity transforms never touched them
        target = batch["target"][:, 0]
        agreement.append((probabilities.argmax(1) == target)[valid].float().mean().item())
    assert min(agreement) > 0.97, agreement


@pytest.mark.parametrize("method, trainer, term", [("logit", "nnKDTrainer_Logit", "kd_logit"),
                                                   ("cwd", "nnKDTrainer_CWD", "kd_cwd")])
def test_training_from_the_cache_never_builds_the_teacher(cached, tmp_path, method, trainer, term):
    hidden = cached["folder"].with_name(cached["folder"].name + ".away")
    cached["folder"].rename(hidden)  # no teacher to build: only the cache can teach
    try:
        env = {**cached["env"], "nnUNet_results": str(tmp_path / "results"), "nnUNet_n_proc_DA": "0"}
        result = run_cli("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", method,
                         "--teacher", cached["spec"], "--teacher-cache", *QUICK_TRAINING, env=env)
    finally:
        hidden.rename(cached["folder"])
    fold = run_fold(tmp_path / "results" / "Dataset991_Synthetic", trainer)
    record = json.loads((fold / "teacher.json").read_text())["teacher"]
    assert record["cache"] == str(cached["cache"].folder) and record["spec"] == cached["spec"]
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "the teacher itself is not loaded" in log and term in log
    assert "validation Dice" in result.stdout


def test_feature_methods_refuse_the_cache(cached, tmp_path):
    env = {**cached["env"], "nnUNet_results": str(tmp_path / "results")}
    result = refuse_in_process("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "feature",
                               "--teacher", cached["spec"], "--teacher-cache", *QUICK_TRAINING, env=env)
    assert result.returncode != 0 and "method feature needs live teacher features" in result.stderr


def test_tskd_distils_the_unlabelled_rest_of_the_fold_from_the_cache(cached, tmp_path):
    """TS-KD in the low-label regime at plain-training cost: logit KD only (feature_weight=0), the labelled
    cases and the fold's other training cases (their labels unread) both taught by the cache; no teacher built."""
    hidden = cached["folder"].with_name(cached["folder"].name + ".away")
    cached["folder"].rename(hidden)
    try:
        env = {**cached["env"], "nnUNet_results": str(tmp_path / "results"), "nnUNet_n_proc_DA": "0"}
        result = run_cli("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "tskd",
                         "--labeled", "2", "--hp", "feature_weight=0", "--teacher", cached["spec"], "--teacher-cache",
                         *QUICK_TRAINING, env=env)
    finally:
        hidden.rename(cached["folder"])
    fold = run_fold(tmp_path / "results" / "Dataset991_Synthetic", "nnKDTrainer_TSKD")
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "the teacher itself is not loaded" in log and "kd_logit" in log and "kd_feature" not in log
    assert "training case(s) --labeled left unlabelled" in log
    assert "validation Dice" in result.stdout


@pytest.mark.parametrize("extra, message", [
    ([], "method tskd needs live teacher features"),
    (["--hp", "feature_weight=0", "--synthetic", "somewhere"], "a teacher cache holds the fold's training cases only"),
])
def test_tskd_uses_the_cache_only_where_it_can(cached, tmp_path, extra, message):
    env = {**cached["env"], "nnUNet_results": str(tmp_path / "results")}
    result = refuse_in_process("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "tskd",
                               "--labeled", "2", "--teacher", cached["spec"], "--teacher-cache", *extra,
                               *QUICK_TRAINING, env=env)
    assert result.returncode != 0 and message in result.stderr and result.stderr.count("nnkd: error:") == 1
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("teacher.json"))


def test_corrupt_and_stale_entries_are_detected_and_recomputed(cached, tmp_path):
    """On the module's cache (no second teacher to cache from scratch). The test ends with every entry recomputed
    for the changed checkpoint, so the copy and its cache still agree for this module's other tests, in any order."""
    spec = cached["spec"]
    env = {**cached["env"], "nnUNet_results": str(tmp_path / "results")}
    cache = TeacherCache(cached["cache"].folder)
    victim = sorted(cache.folder.glob("*.b2nd"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    train = ["nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "logit", "--teacher", spec,
             "--teacher-cache", *QUICK_TRAINING]
    corrupt = run_cli(*train, env=env, check=False)
    assert corrupt.returncode != 0 and "corrupt entries for 1 case(s)" in corrupt.stderr
    assert "for 1 of" in run_cli("nnkd_cache_teacher", *CACHE, "--teacher", spec, env=env).stdout

    checkpoint = cached["folder"] / "fold_0" / "checkpoint_final.pth"
    state = load_checkpoint(checkpoint)
    state["network_weights"] = {k: v + 0.01 if v.is_floating_point() else v
                                for k, v in state["network_weights"].items()}
    torch.save(state, checkpoint)
    stale = run_cli(*train, env=env, check=False)
    assert stale.returncode != 0 and "changed since the cache" in stale.stderr
    cases = len(cache.entries())
    assert f"for {cases} of {cases}" in run_cli("nnkd_cache_teacher", *CACHE, "--teacher", spec, env=env).stdout
