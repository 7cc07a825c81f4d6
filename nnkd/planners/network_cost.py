"""Parameters and GFLOPs of a plans architecture, counted on the network nnU-Net itself would build."""

import math
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


def conv_flops(kind: str, in_channels: int, out_channels: int, kernel, groups: int, out_shape, in_shape) -> int:
    """2 × multiply-adds of one sample through a (transposed, kind "ConvTranspose") convolution, from its shapes
    (N, C, *spatial): what FlopCounterMode counts for it (nnkd.evaluation.layer_rates counts each layer with it too)."""
    taps = math.prod(kernel) * in_channels // groups
    if kind == "ConvTranspose":  # every input voxel scatters into kernel × out_channels outputs
        return 2 * math.prod(in_shape[2:]) * math.prod(kernel) * out_channels * in_channels // groups
    return 2 * math.prod(out_shape[2:]) * out_channels * taps


def count_conv_gflops(network: torch.nn.Module, input_channels: int, patch_size) -> float:
    """count_gflops for a network whose compute is all in its convolution modules, as the U-Nets that nnU-Net builds
    from plans (equal there: tests/test_planning.py): each convolution's FLOPs as FlopCounterMode counts them, read
    from its input and output shapes in one forward pass on the meta device, ~4× faster than FlopCounterMode's
    dispatch of every operation — the architecture search counts hundreds of candidates."""
    total = 0

    def add(module, inputs, output):
        nonlocal total
        kind = "ConvTranspose" if isinstance(module, torch.nn.modules.conv._ConvTransposeNd) else "Conv"
        total += conv_flops(kind, module.in_channels, module.out_channels, module.kernel_size, module.groups,
                            output.shape, inputs[0].shape)

    hooks = [m.register_forward_hook(add) for m in network.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    try:
        with torch.no_grad():
            network(torch.zeros((1, input_channels, *patch_size), device=next(network.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return total / 1e9


def measure(architecture: dict, input_channels: int, num_classes: int, patch_size) -> NetworkCost:
    """Build on the meta device (no memory, no compute) and count."""
    net = build_network(architecture, input_channels, num_classes)
    return NetworkCost(count_params(net), count_conv_gflops(net, input_channels, patch_size))
