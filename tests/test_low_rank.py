"""LoRKD's low-rank experts on tiny CPU networks: routing, gradient isolation, fusion into a stock network."""

import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnkd.distill.low_rank import LowRankExpertConv, attach_experts, expert_parameter_counts, fuse_experts, tasks


def experts_of(network: nn.Module) -> list[LowRankExpertConv]:
    return [m for m in network.modules() if isinstance(m, LowRankExpertConv)]


def randomise_experts(network: nn.Module, seed: int = 0) -> None:
    """Non-zero B, so every expert changes its conv (B = 0 after attach_experts)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in experts_of(network):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=generator) * 0.1)


def expected_weight(m: LowRankExpertConv, task: int) -> torch.Tensor:
    """The LoRKD formula written out independently of the module."""
    return m.weight + m.alpha / m.rank * (m.lora_B[task] @ m.lora_A[task]).reshape(m.weight.shape)


def tiny_unet() -> PlainConvUNet:
    return PlainConvUNet(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d,
                         kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                         n_conv_per_stage=[1, 1, 1], num_classes=3, n_conv_per_stage_decoder=[1, 1], conv_bias=True,
                         norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)


def two_conv_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(2, 4, (1, 3, 3), padding=(0, 1, 1)), nn.LeakyReLU(),
                         nn.Conv3d(4, 3, 3, stride=2, padding=1))


def test_attaching_experts_leaves_the_output_unchanged():
    torch.manual_seed(0)
    net = two_conv_net()
    x = torch.randn(3, 2, 4, 8, 8)
    before = net(x)
    attach_experts(net, num_tasks=3)
    assert len(experts_of(net)) == 2
    with torch.no_grad():
        for m in experts_of(net):
            assert m.lora_A.abs().sum() > 0 and m.lora_B.abs().sum() == 0
        with tasks(net, torch.tensor([0, 2, 1])):
            torch.testing.assert_close(net(x), before, atol=1e-6, rtol=1e-5)
        with tasks(net, 1):
            torch.testing.assert_close(net(x), before, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 5, 3, padding=1, bias=True),
    nn.Conv2d(3, 5, (3, 1), stride=2, padding=(1, 0), bias=False),
    nn.Conv3d(3, 5, (1, 3, 3), stride=2, padding=(0, 1, 1), bias=True),
    nn.Conv3d(3, 5, 3, stride=(1, 2, 2), padding=2, dilation=2, bias=False),
], ids=["2d", "2d-aniso-stride-nobias", "3d-133-stride", "3d-dilated-nobias"])
def test_grouped_conv_equals_a_per_sample_loop_of_plain_convs(conv):
    torch.manual_seed(1)
    expert = LowRankExpertConv(conv, num_tasks=3, rank=4, alpha=16)
    out_channels, in_channels, k0, *rest = conv.weight.shape
    assert expert.lora_A.shape == (3, 4 * k0, in_channels * torch.Size(rest).numel())
    assert expert.lora_B.shape == (3, out_channels * k0, 4 * k0)
    randomise_experts(expert)
    ids = torch.tensor([2, 0, 2, 1])
    x = torch.randn(4, 3, *([5, 9, 8] if conv.weight.ndim == 5 else [9, 8]))
    with torch.no_grad(), tasks(expert, ids):
        grouped = expert(x)
    plain = F.conv3d if conv.weight.ndim == 5 else F.conv2d
    with torch.no_grad():
        loop = torch.cat([plain(x[i:i + 1], expected_weight(expert, t), conv.bias, conv.stride, conv.padding,
                                conv.dilation) for i, t in enumerate(ids.tolist())])
        assert not torch.allclose(loop, conv(x), atol=1e-3)  # the experts really differ from W0
    torch.testing.assert_close(grouped, loop, atol=1e-5, rtol=1e-5)


def test_gradients_of_one_task_reach_only_that_tasks_expert():
    torch.manual_seed(2)
    net = attach_experts(two_conv_net(), num_tasks=3)
    randomise_experts(net)
    ids = torch.tensor([0, 1, 2, 1])
    with tasks(net, ids):
        out = net(torch.randn(4, 2, 4, 8, 8))
    out[ids == 1].square().sum().backward()
    for m in experts_of(net):
        assert m.weight.grad.abs().sum() > 0
        for grad in (m.lora_A.grad, m.lora_B.grad):
            assert grad[1].abs().sum() > 0
            assert torch.equal(grad[[0, 2]], torch.zeros_like(grad[[0, 2]]))


def test_fused_unet_matches_each_expert_and_loads_strictly_into_the_stock_unet():
    torch.manual_seed(3)
    net = attach_experts(tiny_unet(), num_tasks=3, exclude=("decoder.seg_layers",))
    stock = tiny_unet()
    block = net.encoder.stages[1][0].convs[0]
    assert isinstance(block.conv, LowRankExpertConv) and block.all_modules[0] is block.conv
    assert all(type(m) is nn.Conv3d for m in net.decoder.seg_layers)
    assert all(type(m) is nn.ConvTranspose3d for m in net.decoder.transpconvs)
    extra = set(net.state_dict()) - set(stock.state_dict())
    assert set(stock.state_dict()) < set(net.state_dict()) and extra
    assert all(key.endswith((".lora_A", ".lora_B")) for key in extra)

    randomise_experts(net)
    x = torch.randn(3, 1, 4, 16, 16)
    with torch.no_grad():
        with tasks(net, torch.tensor([0, 1, 2])):
            mixed = net(x)
        for t in range(3):
            with tasks(net, t):
                expert_out = net(x)
            fused = fuse_experts(net, t)
            assert not experts_of(fused) and experts_of(net)
            torch.testing.assert_close(fused(x), expert_out, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mixed[t:t + 1], expert_out[t:t + 1], atol=1e-5, rtol=1e-5)
            stock.load_state_dict(fused.state_dict(), strict=True)
            torch.testing.assert_close(stock(x), expert_out, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(fuse_experts(net, 0)(x), fuse_experts(net, 1)(x), atol=1e-3)


@pytest.mark.parametrize("precision", ["autocast", "bfloat16-network"])
def test_experts_run_in_reduced_precision_like_the_fused_plain_convs(precision):
    torch.manual_seed(4)
    net = attach_experts(two_conv_net(), num_tasks=2)
    randomise_experts(net)
    x = torch.randn(2, 2, 4, 8, 8)
    ids = torch.tensor([1, 0])
    reference = [fuse_experts(net, t) for t in range(2)]
    with torch.no_grad():
        expected = torch.cat([reference[t](x[i:i + 1]) for i, t in enumerate(ids.tolist())])
        if precision == "bfloat16-network":
            net, x = net.to(torch.bfloat16), x.to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast"), tasks(net, ids):
            out = net(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


def test_parameter_counts_match_a_hand_count():
    net = nn.Sequential(nn.Conv3d(2, 4, (1, 3, 3)), nn.InstanceNorm3d(4, affine=True), nn.Conv3d(4, 6, 3, bias=False),
                        nn.ConvTranspose3d(6, 4, 2, 2), nn.Conv3d(4, 3, 1))
    attach_experts(net, num_tasks=3, rank=2, exclude=("4",))
    assert [type(m) for m in net] == [LowRankExpertConv, nn.InstanceNorm3d, LowRankExpertConv, nn.ConvTranspose3d,
                                      nn.Conv3d]
    # conv 0: A (2·1, 2·3·3) + B (4·1, 2·1) = 36 + 8; conv 2: A (2·3, 4·3·3) + B (6·3, 2·3) = 216 + 108
    per_task = 36 + 8 + 216 + 108
    # conv 0 weight + bias, norm, conv 2 weight, transposed conv weight + bias, excluded head
    shared = 72 + 4 + 8 + 648 + 192 + 4 + 12 + 3
    assert expert_parameter_counts(net) == (shared, per_task)
    assert sum(p.numel() for p in net.parameters()) == shared + 3 * per_task


def test_forward_without_task_ids_and_bad_task_ids_fail_clearly():
    net = attach_experts(two_conv_net(), num_tasks=2)
    x = torch.randn(2, 2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="no task ids"):
        net(x)
    with tasks(net, torch.tensor([0, 1])):
        net(x)
    with pytest.raises(RuntimeError, match="no task ids"):
        net(x)
    with pytest.raises(ValueError, match=r"out of range"), tasks(net, torch.tensor([0, 2])):
        pass
    with pytest.raises(ValueError, match="batch of 2 samples but 3 task ids"), tasks(net, torch.tensor([0, 1, 1])):
        net(x)
    with pytest.raises(ValueError, match="no low-rank experts"), tasks(nn.Sequential(nn.ReLU()), 0):
        pass


def test_grouped_source_convs_are_refused():
    with pytest.raises(ValueError, match="groups=2"):
        attach_experts(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), num_tasks=2)
