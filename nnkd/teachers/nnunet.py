"""nnU-Net model folders as teachers, whatever trainer or plans made them.

The network is rebuilt from the folder's plans.json with dynamic_network_architectures (no trainer
class is imported) and the fold's checkpoint is loaded with weights_only=True.
Options: `fold` (default: the student's fold if the teacher has it, else `all`), `folds` (an ensemble,
e.g. `folds=0,1,2,3,4`: the folds' logits are averaged, the stage features are the first fold's, since
each fold learns its own feature space), `checkpoint` (default checkpoint_final.pth), `configuration`
(default: from the folder name Trainer__Plans__config).
"""

from pathlib import Path

import numpy as np
import torch

from nnkd.errors import NnkdError
from nnkd.folds import read_model_folder
from nnkd.teachers.base import Teacher, TeacherOutput
from nnkd.teachers.bridge import crop_to_input, pad_to_multiple
from nnkd.checkpoints import load_checkpoint
from nnkd.teachers.registry import register_teacher

DEFAULTS = {"fold": "", "folds": (), "checkpoint": "checkpoint_final.pth", "configuration": ""}


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
    def __init__(self, networks: list[torch.nn.Module], plans: dict, configuration: str, dataset_json: dict):
        super().__init__()
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.networks = torch.nn.ModuleList(networks)
        self.plans = plans
        self.configuration = configuration
        manager = PlansManager(plans)
        cm = manager.get_configuration(configuration)
        encoder = networks[0].encoder
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

    def nnunet_network(self) -> tuple[torch.nn.Module, dict, str] | None:
        return (self.networks[0], self.plans, self.configuration) if len(self.networks) == 1 else None

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        size = x.shape[2:]
        x = pad_to_multiple(x, self.divisible_by)  # the teacher's own strides may not divide the student's patch
        features, logits = None, 0
        for network in self.networks:
            skips = network.encoder(x)
            output = network.decoder(skips)
            logits = logits + (output[0] if isinstance(output, (list, tuple)) else output)
            features = features or skips
        logits = logits[(slice(None), slice(None), *[slice(0, s) for s in size])] / len(self.networks)
        return TeacherOutput(crop_to_input(features, self.feature_strides, size), logits)


def _load_fold(fold_folder: Path, checkpoint_name: str) -> tuple[Path, dict]:
    checkpoint_file = fold_folder / checkpoint_name
    if not checkpoint_file.is_file():
        present = sorted(p.name for p in fold_folder.glob("checkpoint_*.pth"))
        raise NnkdError(f"teacher checkpoint {checkpoint_file} not found (present: {', '.join(present) or 'none'})",
                        "finish the teacher's training or add ?checkpoint=checkpoint_best.pth")
    checkpoint = load_checkpoint(checkpoint_file)
    if "network_weights" not in checkpoint:
        raise NnkdError(f"{checkpoint_file} has no network_weights", "it is not an nnU-Net checkpoint")
    return checkpoint_file, checkpoint


@register_teacher("nnunet", options=DEFAULTS)
def nnunet_teacher(path: str, options: dict, fold=None, device="cpu", **_) -> NnUNetTeacher:
    """A trained nnU-Net model folder (any trainer and plans: default, ResEnc, …), one fold or an ensemble."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnkd.plans import network_from_plans

    folder = Path(path).expanduser()
    if not path or not folder.is_dir():
        raise NnkdError(f"teacher folder {folder} not found", "give the nnU-Net model folder, e.g. "
                        "$nnUNet_results/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres")
    plans, dataset_json = read_model_folder(folder, "teacher folder")
    if options["folds"]:
        fold_folders = [_choose_fold_folder(folder, f, fold) for f in options["folds"]]
    else:
        fold_folders = [_choose_fold_folder(folder, options["fold"] or None, fold)]
    loaded = [_load_fold(f, options["checkpoint"]) for f in fold_folders]

    init_args = loaded[0][1].get("init_args") or {}
    configuration = options["configuration"] or init_args.get("configuration") or folder.name.split("__")[-1]
    manager = PlansManager(plans)
    if configuration not in manager.available_configurations:
        raise NnkdError(f"teacher configuration '{configuration}' not in its plans.json",
                        f"add ?configuration= one of {', '.join(manager.available_configurations)}")
    networks = []
    for checkpoint_file, checkpoint in loaded:
        network = network_from_plans(plans, configuration, dataset_json, allow_init=False)
        weights = {k.removeprefix("module."): v
                   for k, v in checkpoint["network_weights"].items()}
        try:
            network.load_state_dict(weights)
        except RuntimeError as e:
            raise NnkdError(f"{checkpoint_file} does not match the architecture in {folder / 'plans.json'}: "
                            f"{str(e).splitlines()[0]}", "use the plans.json the checkpoint was trained with") from e
        networks.append(network)
    teacher = NnUNetTeacher(networks, plans, configuration, dataset_json).to(device)
    teacher.dataset_json = dataset_json
    axes = loaded[0][1].get("inference_allowed_mirroring_axes")  # what nnU-Net's predictor would mirror
    teacher.mirror_axes = tuple(int(a) for a in axes) if axes is not None else None
    teacher.set_checkpoint(*[f for f, _ in loaded])
    return teacher
