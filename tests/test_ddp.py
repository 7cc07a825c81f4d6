"""nnkd's DDP pieces on two CPU processes (gloo): a feature-KD step that calls the student's encoder and
decoder directly (bypassing DDP's forward hooks) with helper projectors outside the DDP module. After
nnkd's helper broadcast and gradient averaging, both ranks hold the same student and helper weights, equal
to one process's step on the two ranks' batches concatenated."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnkd.distill.feature import FeatureProjectors, feature_distance
from nnkd.trainers.ddp import average_gradients, broadcast_state

TEACHER_CHANNELS = [6, 12, 24]


def _student():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)  # the same student on every rank, as DDP's own broadcast would make it
    return PlainConvUNet(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], [1, 1, 1], 3, [1, 1], True,
                         torch.nn.InstanceNorm3d, {"affine": True}, nonlin=torch.nn.LeakyReLU)


def _batch(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    data = torch.randn(2, 1, 8, 8, 8, generator=g)
    target = torch.randint(0, 3, (2, 8, 8, 8), generator=g)
    teacher = [torch.randn(2, c, 8 // 2 ** i, 8 // 2 ** i, 8 // 2 ** i, generator=g)
               for i, c in enumerate(TEACHER_CHANNELS)]
    return data, target, teacher


def _step(student, helpers, data, target, teacher, sync=None) -> None:
    """One SGD step of CE + feature KD through encoder and decoder, the way nnKDTrainer calls them."""
    params = list(student.parameters()) + list(helpers.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    skips = student.encoder(data)
    logits = student.decoder(skips)
    projected = helpers(skips)
    loss = torch.nn.functional.cross_entropy(logits, target) + sum(
        feature_distance(p, t, "mse") for p, t in zip(projected, teacher))
    loss.backward()
    if sync:
        sync(params)
    optimizer.step()


def _helpers(seed: int):
    torch.manual_seed(seed)  # each rank builds its helpers with another seed: only the broadcast aligns them
    return FeatureProjectors([4, 8, 16], TEACHER_CHANNELS, 3)


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        student = torch.nn.parallel.DistributedDataParallel(_student())
        helpers = _helpers(seed=rank)
        broadcast_state(helpers)
        _step(student.module, helpers, *_batch(rank), sync=average_gradients)
        torch.save({"student": student.module.state_dict(), "helpers": helpers.state_dict()},
                   os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch without gloo")
def test_two_rank_step_equals_one_process_step_on_the_joined_batch(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    student, helpers = _student(), _helpers(seed=0)  # rank 0's helpers, which the broadcast handed to rank 1
    joined = [torch.cat(parts) for parts in zip(*[(d, t) for d, t, _ in map(_batch, range(2))])]
    teacher = [torch.cat(parts) for parts in zip(*[f for _, _, f in map(_batch, range(2))])]
    _step(student, helpers, *joined, teacher)

    before = _student().state_dict()
    for part, reference in (("student", student.state_dict()), ("helpers", helpers.state_dict())):
        for name, value in reference.items():
            assert torch.equal(ranks[0][part][name], ranks[1][part][name]), f"ranks differ in {part}.{name}"
            assert torch.allclose(ranks[0][part][name], value, atol=1e-6), f"{part}.{name} differs from one process"
    assert any(not torch.equal(before[n], v) for n, v in ranks[0]["student"].items())  # the step changed weights
