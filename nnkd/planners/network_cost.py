"""Parameters and GFLOPs of a plans architecture, counted on the network nnU-Net itself would build."""

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans


@dataclass(frozen=True)
class NetworkCost:
    params: int
    gflops: float  # per forward pass of one patch (batch 1, inference: no deep supervision)


def build_network(architecture: dict, input_channels: int, num_classes: int, device: str | torch.device = "meta",
                  deep_supervision: bool = False) -> torch.nn.Module:
    """The stock dynamic_network_architectures network for a plans `architecture` entry."""
    with torch.device(device):
        return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                      architecture["_kw_requires_import"], input_channels, num_classes,
                                      allow_init=False, deep_supervision=deep_supervision)


def count_params(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def count_gflops(network: torch.nn.Module, input_channels: int, patch_size) -> float:
    """FLOPs of one forward pass as counted by torch's FlopCounterMode (a multiply-add is 2 FLOPs)."""
    device = next(network.parameters()).device
    x = torch.zeros((1, input_channels, *patch_size), device=device)
    with torch.no_grad(), FlopCounterMode(display=False, depth=0) as counter:
        network(x)
    return counter.get_total_flops() / 1e9


def measure(architecture: dict, input_channels: int, num_classes: int, patch_size) -> NetworkCost:
    """Build on the meta device (no memory, no compute) and count."""
    net = build_network(architecture, input_channels, num_classes)
    return NetworkCost(count_params(net), count_gflops(net, input_channels, patch_size))
