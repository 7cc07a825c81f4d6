"""LoRKD's per-task low-rank experts: one shared conv weight W0 plus a low-rank expert for every task.

For task t a wrapped conv uses W0 + (α/r)·(B_t A_t).view(W0.shape). With kernel (k0, k1, ...) A_t is
(r·k0, C_in·k1·k2…) and B_t is (C_out·k0, r·k0): loralib's ConvLoRA layout, generalised to 3D and to anisotropic
kernels such as (1, 3, 3). A starts kaiming-uniform and B at zero, so attaching experts changes no output.

State-dict layout: the wrapper takes the place of the conv it wraps and adopts that conv's own parameters as
`weight` and `bias`, so the shared part keeps the stock keys (`<name>.weight`, `<name>.bias`) and the only new
keys are `<name>.lora_A` (T, r·k0, C_in·k1·k2…) and `<name>.lora_B` (T, C_out·k0, r·k0). Fusion folds an expert
into `weight` and drops those two keys, so a fused network loads strictly into the stock architecture, and a
stock checkpoint loads into a wrapped network with only the lora keys missing.

A mixed-task batch runs as one grouped convolution (groups = batch size) with per-sample weights, LoRKD's
"efficient knowledge separation conv": the gradient of task t's samples reaches expert t only. Transposed
convolutions are not wrapped and stay shared by all tasks, as in LoRKD.
"""

import copy
import math
from collections import defaultdict
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class LowRankExpertConv(nn.Module):
    """A Conv2d/Conv3d whose weight for task t is W0 + (α/r)·B_t A_t; route samples with `tasks(...)`."""

    def __init__(self, conv: nn.Conv2d | nn.Conv3d, num_tasks: int, rank: int = 4, alpha: float = 16):
        super().__init__()
        if not isinstance(conv, (nn.Conv2d, nn.Conv3d)):
            raise TypeError(f"low-rank experts wrap nn.Conv2d or nn.Conv3d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"low-rank experts need a dense conv, got groups={conv.groups}: "
                             "grouped and depthwise convs are not supported")
        if conv.padding_mode != "zeros":
            raise ValueError(f"low-rank experts support padding_mode='zeros' only, got '{conv.padding_mode}'")
        if num_tasks < 1 or rank < 1:
            raise ValueError(f"need num_tasks >= 1 and rank >= 1, got num_tasks={num_tasks}, rank={rank}")
        # The conv's own Parameter objects: stock state-dict keys, and optimizers holding them keep working.
        self.register_parameter("weight", conv.weight)
        self.register_parameter("bias", conv.bias)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.num_tasks, self.rank, self.alpha, self.scaling = num_tasks, rank, alpha, alpha / rank
        out_channels, in_channels, k0, *kernel_rest = conv.weight.shape
        self.lora_A = nn.Parameter(conv.weight.new_empty(num_tasks, rank * k0, in_channels * math.prod(kernel_rest)))
        self.lora_B = nn.Parameter(conv.weight.new_zeros(num_tasks, out_channels * k0, rank * k0))
        for a in self.lora_A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # per task, as LoRA initialises its 2D A
        self.task_ids: int | torch.Tensor | None = None  # set by `tasks`

    def task_weight(self, task: int) -> torch.Tensor:
        """W0 + (α/r)·(B_t A_t).view(W0.shape)."""
        return self.weight + self.scaling * (self.lora_B[task] @ self.lora_A[task]).view(self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task_ids is None:
            raise RuntimeError("LowRankExpertConv has no task ids: run the forward inside "
                               "`with tasks(network, task_ids):` (nnkd.distill.low_rank)")
        if isinstance(self.task_ids, int):
            return self._conv(x, self.task_weight(self.task_ids), self.bias, groups=1)
        n = x.shape[0]
        if self.task_ids.shape[0] != n:
            raise ValueError(f"batch of {n} samples but {self.task_ids.shape[0]} task ids")
        # All tasks' deltas at once (T is small), then one weight per sample: (N, C_out, C_in, *k).
        deltas = (self.lora_B @ self.lora_A).view(self.num_tasks, *self.weight.shape)
        weights = self.weight + self.scaling * deltas[self.task_ids]
        bias = None if self.bias is None else self.bias.repeat(n)
        out = self._conv(x.reshape(1, -1, *x.shape[2:]), weights.flatten(0, 1), bias, groups=n)
        return out.view(n, -1, *out.shape[2:])

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
        conv = F.conv3d if weight.ndim == 5 else F.conv2d
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def fused(self, task: int) -> nn.Conv2d | nn.Conv3d:
        """A plain conv of the same configuration computing what task `task` computes here."""
        out_channels, in_channels, *kernel = self.weight.shape
        conv_type = nn.Conv3d if self.weight.ndim == 5 else nn.Conv2d
        conv = conv_type(in_channels, out_channels, kernel, self.stride, self.padding, self.dilation,
                         bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.task_weight(task))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        out_channels, in_channels, *kernel = self.weight.shape
        return (f"{in_channels}, {out_channels}, kernel_size={tuple(kernel)}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, num_tasks={self.num_tasks}, "
                f"rank={self.rank}, alpha={self.alpha}")


def attach_experts(network: nn.Module, num_tasks: int, rank: int = 4, alpha: float = 16,
                   exclude: tuple[str, ...] = ()) -> nn.Module:
    """Wrap every Conv2d/Conv3d of `network` in place in a LowRankExpertConv; return the network.

    A conv is left alone when one of its qualified names is a prefix in `exclude` or lies below one (whole
    name components: "decoder.seg_layers" covers "decoder.seg_layers.0"); pass the per-task heads here.
    Transposed convs are not Conv2d/Conv3d and stay shared.
    """
    if isinstance(exclude, str):
        exclude = (exclude,)
    names = defaultdict(list)  # one conv may sit under several names (nnU-Net: `conv` and `all_modules.0`)
    for name, module in network.named_modules(remove_duplicate=False):
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            names[module].append(name)
    _swap_modules(network, {conv: LowRankExpertConv(conv, num_tasks, rank, alpha)
                            for conv, conv_names in names.items()
                            if not any(_is_under(name, prefix) for name in conv_names for prefix in exclude)})
    return network


@contextmanager
def tasks(network: nn.Module, task_ids: int | torch.Tensor):
    """Route the forwards inside the block: an int sends the whole batch (any size) to that task's expert, a
    1-D integer tensor sends sample i to expert task_ids[i]. The previous routing is restored on exit."""
    experts = [m for m in network.modules() if isinstance(m, LowRankExpertConv)]
    if not experts:
        raise ValueError("the network has no low-rank experts: call attach_experts first")
    route = _routing(task_ids, experts[0].num_tasks, experts[0].weight.device)
    previous = [m.task_ids for m in experts]
    for m in experts:
        m.task_ids = route
    try:
        yield network
    finally:
        for m, p in zip(experts, previous):
            m.task_ids = p


def fuse_experts(network: nn.Module, task: int) -> nn.Module:
    """A deep copy of `network` with each expert conv folded, for task `task`, into a plain conv: a stock
    network whose state dict has exactly the keys the network had before attach_experts."""
    fused = copy.deepcopy(network)
    experts = [m for m in fused.modules() if isinstance(m, LowRankExpertConv)]
    if experts:
        _routing(task, experts[0].num_tasks, experts[0].weight.device)  # range check
    _swap_modules(fused, {m: m.fused(task) for m in experts})
    return fused


def expert_parameter_counts(network: nn.Module) -> tuple[int, int]:
    """(shared parameters, expert parameters of one task): everything but lora_A/lora_B, and their 1/T share."""
    experts = [m for m in network.modules() if isinstance(m, LowRankExpertConv)]
    expert_params = {id(p) for m in experts for p in (m.lora_A, m.lora_B)}
    shared = sum(p.numel() for p in network.parameters() if id(p) not in expert_params)
    per_task = sum((m.lora_A.numel() + m.lora_B.numel()) // m.num_tasks for m in experts)
    return shared, per_task


def _routing(task_ids: int | torch.Tensor, num_tasks: int, device: torch.device) -> int | torch.Tensor:
    """Checked task ids: an int when one task serves the whole batch (plain conv), else a LongTensor on
    `device`. One host sync here per step instead of one per conv."""
    if isinstance(task_ids, torch.Tensor):
        if task_ids.ndim != 1 or task_ids.numel() == 0 or task_ids.is_floating_point():
            raise ValueError(f"task ids must be an int or a non-empty 1-D integer tensor, got {task_ids.dtype} "
                             f"of shape {tuple(task_ids.shape)}")
        values = task_ids.tolist()
    else:
        values = [task_ids]
    bad = sorted({v for v in values if not 0 <= v < num_tasks})
    if bad:
        raise ValueError(f"task ids {bad} out of range: the experts serve tasks 0..{num_tasks - 1}")
    if len(set(values)) == 1:
        return int(values[0])
    return task_ids.to(device=device, dtype=torch.long)


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _swap_modules(network: nn.Module, replacements: dict[nn.Module, nn.Module]) -> None:
    """Put each replacement wherever its original sits, under every parent and name that holds it."""
    for parent in list(network.modules()):
        for name, child in list(parent._modules.items()):
            if child in replacements:
                setattr(parent, name, replacements[child])
