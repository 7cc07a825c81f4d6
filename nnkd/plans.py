"""Reading nnU-Net plans the way nnU-Net does: channels, output heads and the network they describe."""

import torch

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager


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
