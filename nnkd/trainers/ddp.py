"""nnkd's own pieces of multi-GPU (DDP) training, for what DDP's forward hooks do not cover: helper modules that
live outside the DDP-wrapped student, and student calls that go through its encoder and decoder directly."""

import torch
import torch.distributed as dist
from torch import nn


def broadcast_state(module: nn.Module, src: int = 0) -> None:
    """Every rank takes rank `src`'s parameters and buffers (helpers are built independently on each rank)."""
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=src)


def average_gradients(params: list[torch.Tensor]) -> None:
    """Replace each gradient by its mean over the ranks, as DDP's reducer would (equal batches per rank)."""
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world
