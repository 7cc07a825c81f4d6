"""nnU-Net model folders as teachers, whatever trainer or plans made them.

The network is rebuilt from the folder's plans.json with dynamic_network_architectures (no trainer
class is imported) and the fold's checkpoint is loaded with weights_only=True.
Options: `fold` (default: the student's fold if the teacher has it, else `all`), `checkpoint`
(default checkpoint_final.pth), `configuration` (default: from the folder name Trainer__Plans__config).
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nnkd.errors import NnkdError
from nnkd.teachers.base import Teacher, TeacherOutput
from nnkd.teachers.checkpoint import load_checkpoint, sha256_of
from nnkd.teachers.registry import register_teacher

KNOWN_OPTIONS = {"fold", "checkpoint", "configuration"}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise NnkdError(f"{path.name} missing in teacher folder {path.parent}",
                        "point --teacher to an nnU-Net model folder (with plans.json, dataset.json, fold_X/)") from e
    except ValueError as e:
        raise NnkdError(f"{path} is not valid JSON", "restore the teacher folder from its source") from e


def _choose_fold_folder(folder: Path, fold, student_fold) -> Path:
    if fold is not None:
        candidate = folder / f"fold_{fold}"
        if not candidate.is_dir():
            raise NnkdError(f"teacher fold {fold} not found in {folder}", "pick a fold the teacher was trained on")
        return candidate
    for candidate in ([f"fold_{student_fold}"] if student_fold is not None else []) + ["fold_all"]:
        if (folder / candidate).is_dir():
            return folder / candidate
    available = sorted(p.name for p in folder.glob("fold_*"))
    raise NnkdError(f"teacher in {folder} has neither fold {student_fold} nor fold all (it has "
                    f"{', '.join(available) or 'no folds'})", "add ?fold=N to the teacher spec")


class NnUNetTeacher(Teacher):
    def __init__(self, network: torch.nn.Module, plans: dict, configuration: str, dataset_json: dict):
        super().__init__()
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.network = network
        manager = PlansManager(plans)
        cm = manager.get_configuration(configuration)
        encoder = network.encoder
        self.spatial_dims = len(cm.patch_size)
        self.in_channels = sum(1 for _ in dataset_json["channel_names"])
        self.feature_channels = list(encoder.output_channels)
        self.feature_strides = [tuple(int(s) for s in np.prod(encoder.strides[: i + 1], axis=0))
                                for i in range(len(encoder.strides))]
        self.labels = dict(dataset_json["labels"])
        self.plans_configuration = {"spacing": list(cm.spacing), "normalization_schemes": cm.normalization_schemes,
                                    "transpose_forward": list(manager.transpose_forward),
                                    "intensity_properties": plans["foreground_intensity_properties_per_channel"]}
        self.divisible_by = self.feature_strides[-1]

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        size = x.shape[2:]
        pad = [(-s) % d for s, d in zip(size, self.divisible_by)]
        if any(pad):  # the teacher's own strides may not divide the student's patch
            x = F.pad(x, [v for p in reversed(pad) for v in (0, p)])
        skips = self.network.encoder(x)
        logits = self.network.decoder(skips)
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        logits = logits[(slice(None), slice(None), *[slice(0, s) for s in size])]
        return TeacherOutput(list(skips), logits)


@register_teacher("nnunet")
def nnunet_teacher(path: str, options: dict, fold=None, device="cpu", **_) -> NnUNetTeacher:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnkd.plans import network_from_plans

    unknown = set(options) - KNOWN_OPTIONS
    if unknown:
        raise NnkdError(f"unknown option(s) {', '.join(sorted(unknown))} for nnunet teacher",
                        f"nnunet teachers take {', '.join(sorted(KNOWN_OPTIONS))}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise NnkdError(f"teacher folder {folder} not found", "give the nnU-Net model folder, e.g. "
                        "$nnUNet_results/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres")
    plans = _read_json(folder / "plans.json")
    dataset_json = _read_json(folder / "dataset.json")
    fold_folder = _choose_fold_folder(folder, options.get("fold"), fold)
    checkpoint_file = fold_folder / options.get("checkpoint", "checkpoint_final.pth")
    if not checkpoint_file.is_file():
        present = sorted(p.name for p in fold_folder.glob("checkpoint_*.pth"))
        raise NnkdError(f"teacher checkpoint {checkpoint_file} not found (present: {', '.join(present) or 'none'})",
                        "finish the teacher's training or add ?checkpoint=checkpoint_best.pth")
    checkpoint = load_checkpoint(checkpoint_file)
    if "network_weights" not in checkpoint:
        raise NnkdError(f"{checkpoint_file} has no network_weights", "it is not an nnU-Net checkpoint")

    configuration = options.get("configuration") or (checkpoint.get("init_args") or {}).get("configuration") \
        or folder.name.split("__")[-1]
    manager = PlansManager(plans)
    if configuration not in manager.available_configurations:
        raise NnkdError(f"teacher configuration '{configuration}' not in its plans.json",
                        f"add ?configuration= one of {', '.join(manager.available_configurations)}")
    network = network_from_plans(plans, configuration, dataset_json, allow_init=False)
    weights = {k[len("module."):] if k.startswith("module.") else k: v
               for k, v in checkpoint["network_weights"].items()}
    try:
        network.load_state_dict(weights)
    except RuntimeError as e:
        raise NnkdError(f"{checkpoint_file} does not match the architecture in {folder / 'plans.json'}: "
                        f"{str(e).splitlines()[0]}", "use the plans.json the checkpoint was trained with") from e
    teacher = NnUNetTeacher(network, plans, configuration, dataset_json).to(device)
    teacher.checkpoint_sha256 = sha256_of(checkpoint_file)
    teacher.checkpoint_path = str(checkpoint_file)
    return teacher
