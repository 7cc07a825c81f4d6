"""Reading nnU-Net plans the way nnU-Net does: the one loader of a preprocessed configuration (with the
"plans not found" errors), channels, output heads and the network they describe."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnkd.errors import NnkdError
from nnkd.nnunet_env import find_dataset_name, require_env

DEFAULT_TEACHER_PLANS = "nnUNetPlans"  # nnU-Net's default plans: the teacher's, unless told otherwise


@dataclass(frozen=True)
class PreprocessedConfiguration:
    """One plans configuration of a dataset in nnUNet_preprocessed: its plans, dataset.json and data folder."""

    dataset_name: str
    folder: Path  # $nnUNet_preprocessed/DatasetXXX
    plans_name: str
    configuration: str | None  # None: the plans alone were asked for
    plans: dict
    dataset_json: dict

    @classmethod
    def load(cls, dataset: str | int, plans: str = "nnUNetPlans", configuration: str | None = "3d_fullres",
             hint: str | None = None, need_data: bool = False) -> "PreprocessedConfiguration":
        """The configuration, or one clear error: plans not found (`hint` says how to plan), configuration not in
        the plans, or (with `need_data`) its preprocessed data missing."""
        name = find_dataset_name(dataset)
        folder = require_env("nnUNet_preprocessed")["nnUNet_preprocessed"] / name
        plans_file = folder / f"{plans}.json"
        if not plans_file.is_file():
            raise NnkdError(f"plans {plans_file} not found", hint or f"plan first: nnkd_plan_and_preprocess -d {dataset}")
        plans_json = json.loads(plans_file.read_text())
        if configuration is not None and configuration not in plans_json["configurations"]:
            raise NnkdError(f"unknown configuration '{configuration}'",
                            f"{plans} has {', '.join(plans_json['configurations'])}")
        config = cls(name, folder, plans, configuration, plans_json, json.loads((folder / "dataset.json").read_text()))
        if need_data and (not config.data_folder.is_dir() or not any(config.data_folder.iterdir())):
            raise NnkdError(f"preprocessed data {config.data_folder} not found",
                            f"run nnkd_plan_and_preprocess -d {dataset} -c {configuration}")
        return config

    @property
    def plans_manager(self) -> PlansManager:
        return PlansManager(self.plans)

    @property
    def configuration_manager(self):
        return self.plans_manager.get_configuration(self.configuration)

    @property
    def data_plans_name(self) -> str:
        """The plans that preprocessed the data: student plans share their teacher plans' data."""
        return self.plans.get("nnkd", {}).get("teacher_plans", self.plans_name)

    @property
    def data_folder(self) -> Path:
        return self.folder / self.configuration_manager.data_identifier

    @property
    def dataset_class(self):
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        return infer_dataset_class(str(self.data_folder))

    @property
    def num_channels(self) -> int:
        return len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {})))

    @property
    def encoder_stages(self) -> int:
        return len(self.configuration_manager.network_arch_init_kwargs["features_per_stage"])

    def identity(self) -> dict:
        return {"dataset": self.dataset_name, "plans": self.data_plans_name, "configuration": self.configuration,
                "data_identifier": self.configuration_manager.data_identifier}


def num_input_channels(plans: dict, configuration: str, dataset_json: dict) -> int:
    manager = PlansManager(plans)
    return determine_num_input_channels(manager, manager.get_configuration(configuration), dataset_json)


def num_segmentation_heads(plans: dict, dataset_json: dict) -> int:
    return PlansManager(plans).get_label_manager(dataset_json).num_segmentation_heads


def network_from_plans(plans: dict, configuration: str, dataset_json: dict, deep_supervision: bool = False,
                       allow_init: bool = True) -> torch.nn.Module:
    """The stock network of a plans configuration, built exactly as nnU-Net's trainer and predictor do."""
    cm = PlansManager(plans).get_configuration(configuration)
    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import,
                                  num_input_channels(plans, configuration, dataset_json),
                                  num_segmentation_heads(plans, dataset_json),
                                  allow_init=allow_init, deep_supervision=deep_supervision)
