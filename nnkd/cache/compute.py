"""nnkd_cache_teacher: run the teacher once over a fold's training cases, as nnU-Net predicts (sliding
window, Gaussian weighting, no mirroring), and store its probabilities."""

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nnkd.atomic import write_json_atomic
from nnkd.cache.store import CacheSettings, TeacherCache, cache_folder
from nnkd.devices import resolve_device
from nnkd.errors import NnkdError
from nnkd.folds import SPLITS, cases_of_fold, read_splits
from nnkd.nnunet_env import parse_fold
from nnkd.plans import DEFAULT_TEACHER_PLANS, PreprocessedConfiguration
from nnkd.teachers.fit import check_teacher_fits


@dataclass
class CacheRequest:
    dataset: str
    configuration: str
    fold: str
    teacher: str
    plans: str = DEFAULT_TEACHER_PLANS
    settings: CacheSettings = CacheSettings()
    device: str | None = None
    step_size: float = 0.5
    num_parts: int = 1  # as nnUNetv2_predict: this process caches cases[part_id::num_parts]
    part_id: int = 0


def check_parts(num_parts: int, part_id: int) -> None:
    if num_parts < 1:
        raise NnkdError(f"-num_parts {num_parts} is not positive", "give the number of processes sharing the work, "
                                                                   "1 or more")
    if not 0 <= part_id < num_parts:
        raise NnkdError(f"-part_id {part_id} is not between 0 and {num_parts - 1}",
                        f"give each of the {num_parts} processes its own -part_id from 0 to {num_parts - 1}")


def sliding_window_logits(teacher, data: torch.Tensor, patch_size, step_size: float, device) -> torch.Tensor:
    """The teacher's logits for a whole preprocessed case (C, *spatial), as nnU-Net predicts: the case padded
    to at least one patch, nnU-Net's tile positions and Gaussian weights (a 2D configuration goes slice by
    slice). Accumulated in float32, where nnU-Net's predictor uses float16, which loses the logits' precision
    where the Gaussian weights are small."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    patch_size = tuple(int(p) for p in patch_size)
    padded, revert = pad_nd_image(data, patch_size, "constant", {"value": 0}, True, None)
    spatial = padded.shape[1:]
    steps = compute_steps_for_sliding_window(spatial[-len(patch_size):], patch_size, step_size)
    gaussian = compute_gaussian(patch_size, sigma_scale=1. / 8, value_scaling_factor=10, device=torch.device("cpu"))
    gaussian = gaussian.float()
    logits, weights = None, torch.zeros(spatial)
    outer = [(z,) for z in range(spatial[0])] if len(patch_size) < len(spatial) else [()]
    for prefix in outer:
        for corner in itertools.product(*steps):
            region = prefix + tuple(slice(c, c + p) for c, p in zip(corner, patch_size))
            tile = padded[(slice(None), *region)][None].to(device)
            with torch.no_grad():
                out = teacher(tile).logits[0].float().cpu()
            if logits is None:
                logits = torch.zeros((out.shape[0], *spatial))
            logits[(slice(None), *region)] += out * gaussian
            weights[region] += gaussian
    return (logits / weights)[(slice(None), *revert[1:])]


def fold_training_cases(preprocessed_dataset: Path, data_folder: Path, fold) -> list[str]:
    """The fold's training cases exactly as nnU-Net's trainer splits them (splits_final.json, created with
    nnU-Net's seeded 5-fold split if missing)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    identifiers = sorted(infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder)))
    if not identifiers:
        raise NnkdError(f"no preprocessed cases in {data_folder}", "run nnkd_plan_and_preprocess first")
    if fold == "all":
        return identifiers
    splits = read_splits(preprocessed_dataset)
    if splits is None:  # as nnU-Net's trainer makes it, so the student trains on the cases cached here
        splits = generate_crossval_split(identifiers, seed=12345, n_splits=5)
        write_json_atomic(Path(preprocessed_dataset) / SPLITS, splits)
    return cases_of_fold(splits, fold, "train")


def probabilities_of(logits: torch.Tensor, regions: bool) -> np.ndarray:
    probabilities = torch.sigmoid(logits.float()) if regions else torch.softmax(logits.float(), 0)
    return probabilities.cpu().numpy()


def cache_teacher(request: CacheRequest) -> Path:
    """Compute the missing or stale cases of the cache (of this part's share of them); return its folder."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnkd.teachers.registry import create_teacher

    config = PreprocessedConfiguration.load(request.dataset, request.plans, request.configuration, need_data=True)
    manager, cm, dataset_json = config.plans_manager, config.configuration_manager, config.dataset_json
    preprocessed, data_folder = config.folder, config.data_folder
    fold = parse_fold(request.fold)
    check_parts(request.num_parts, request.part_id)
    label_manager = manager.get_label_manager(dataset_json)
    if request.settings.topk and label_manager.has_regions:
        raise NnkdError("--topk needs mutually exclusive classes, this dataset trains regions",
                        "leave --topk out for region-based datasets")
    if request.settings.topk > label_manager.num_segmentation_heads:
        raise NnkdError(f"--topk {request.settings.topk} is more than the dataset's "
                        f"{label_manager.num_segmentation_heads} classes",
                        f"give --topk 1 to {label_manager.num_segmentation_heads}, or leave it out to keep every class")

    device = resolve_device(request.device)
    teacher = create_teacher(request.teacher, fold=fold, device=device)
    check_teacher_fits(teacher, manager, request.configuration, dataset_json, True, "the teacher cache")
    cases = fold_training_cases(preprocessed, data_folder, fold)
    cache = TeacherCache(cache_folder(preprocessed, cm.data_identifier, fold, request.teacher, request.settings))
    cache.start(teacher, request.settings, dict(dataset_json["labels"]), label_manager.has_regions, cm.patch_size,
                request.configuration)
    share = cases[request.part_id::request.num_parts]
    todo = [c for c in share if not cache.is_current(c, teacher.checkpoint_sha256)]

    dataset = infer_dataset_class(str(data_folder))(str(data_folder), identifiers=todo)
    classes = label_manager.num_segmentation_heads
    voxels = sum(int(np.prod(dataset.load_case(c)[0].shape[1:])) for c in todo)
    part = f" (part {request.part_id} of 0-{request.num_parts - 1}: {len(share)})" if request.num_parts > 1 else ""
    print(f"nnkd: caching {teacher.spec} for {len(todo)} of {len(cases)}{part} training case(s) of fold {fold} in "
          f"{cache.folder}; at most {estimated_bytes(voxels, classes, request.settings, len(cm.patch_size)) / 1e9:.2f}"
          f" GB before compression")

    for case in tqdm(todo, desc="teacher cache", unit="case"):
        data = torch.from_numpy(np.asarray(dataset.load_case(case)[0][:], dtype=np.float32))
        logits = sliding_window_logits(teacher, data, cm.patch_size, request.step_size, device)
        cache.write_case(case, probabilities_of(logits, label_manager.has_regions), teacher.checkpoint_sha256)
    missing = [c for c in cases if not cache.is_current(c, teacher.checkpoint_sha256)]
    if missing:  # other parts still at work (or not started)
        print(f"nnkd: part {request.part_id} done; the cache holds {len(cases) - len(missing)} of {len(cases)} "
              f"case(s), the other parts compute the rest (e.g. {missing[0]})")
        return cache.folder
    cache.record_size()
    print(f"nnkd: teacher cache complete: {len(cases)} case(s), {cache.manifest['bytes'] / 1e6:.1f} MB on disk")
    return cache.folder


def estimated_bytes(voxels: int, classes: int, settings: CacheSettings, patch_axes: int) -> int:
    """Uncompressed size of the stored arrays."""
    per_voxel = (settings.topk or classes) * (2 if settings.dtype == "float16" else 4) + (settings.topk or 0)
    return int(voxels * per_voxel / (2 ** patch_axes if settings.resolution == "half" else 1))
