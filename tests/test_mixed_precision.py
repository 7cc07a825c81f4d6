"""Every distillation loss on float16 and bfloat16 inputs of large magnitude, as CUDA's autocast hands them over:
finite, float32 results within a stated tolerance of the float32 computation, gradients finite too."""

import pytest
import torch

from nnkd.distill.cka import cka_per_stage
from nnkd.distill.feature import feature_distance
from nnkd.distill.logits import KD_LOSSES, kd_kl_loss, kd_loss
from nnkd.distill.multi_teacher import adaptor_loss

# Rounding of the inputs alone: float16 keeps 11 significant bits, bfloat16 8 (relative error 2⁻⁸ per value).
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPES = list(TOLERANCE)


def _logits(scale: float = 40.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits with confident (±scale) and undecided voxels side by side."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(2, 4, 6, 8, 8, generator=g) * scale
    student = teacher * 0.5 + torch.randn(2, 4, 6, 8, 8, generator=g) * scale / 4
    return student, teacher


def _features(scale: float = 300.0, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(2, 16, 4, 6, 6, generator=g) * scale
    return teacher[:, :8] * 0.7 + torch.randn(2, 8, 4, 6, 6, generator=g) * scale / 3, teacher


def _check(fn, *inputs, dtype, relative: float | None = None):
    """fn on float32 inputs and on the same inputs cast to `dtype` (with gradients): both finite, the results
    float32 and within the tolerance, relative to the float32 value (or absolute when it is below 1)."""
    reference = fn(*[x.float() for x in inputs])
    low = [x.to(dtype).requires_grad_(True) for x in inputs]
    value = fn(*low)
    assert value.dtype == torch.float32 and torch.isfinite(value).all()
    value.sum().backward()
    assert all(x.grad is None or torch.isfinite(x.grad).all() for x in low)
    tolerance = relative or TOLERANCE[dtype]
    assert torch.allclose(value, reference, rtol=tolerance, atol=tolerance), (float(value.sum()),
                                                                              float(reference.sum()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KD_LOSSES)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_logit_kd_losses_in_half_precision(dtype, kind, temperature):
    student, teacher = _logits()
    _check(lambda s, t: kd_loss(s, t, temperature, kind), student, teacher, dtype=dtype,
           relative=TOLERANCE[dtype] * 4 * temperature)


@pytest.mark.parametrize("dtype", DTYPES)
def test_region_kd_and_masked_kd_in_half_precision(dtype):
    student, teacher = _logits(scale=30.0, seed=3)
    mask = torch.zeros(2, 6, 8, 8, dtype=torch.bool)
    mask[:, :3] = True
    _check(lambda s, t: kd_kl_loss(s, t, 2.0, regions=True), student, teacher, dtype=dtype,
           relative=TOLERANCE[dtype] * 8)
    _check(lambda s, t: kd_kl_loss(s, t, 2.0, mask=mask), student, teacher, dtype=dtype, relative=TOLERANCE[dtype] * 8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_feature_distances_in_half_precision(dtype, kind):
    student, teacher = _features()
    _check(lambda s, t: feature_distance(s, t[:, :8], kind), student, teacher, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cka_in_half_precision(dtype):
    student, teacher = _features()
    _check(lambda s, t: cka_per_stage([(s, t), (s[:, :4], t)]), student, teacher, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multiteacher_adaptor_loss_in_half_precision(dtype):
    student, teacher = _features()
    _check(lambda s, t: adaptor_loss(s, t[:, :8]), student, teacher, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_drd_hybrid_kl_in_half_precision(dtype):
    """DRD's β term: the student's logits against the detached hybrid logits at T = 1."""
    student, hybrid = _logits(scale=20.0, seed=5)
    _check(lambda s, h: kd_kl_loss(s, h.detach(), 1.0), student, hybrid, dtype=dtype, relative=TOLERANCE[dtype] * 8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lorkd_task_kl_in_half_precision(dtype):
    """LoRKD's per-task KL at its T = 10 on one task's samples."""
    student, teacher = _logits(scale=60.0, seed=7)
    _check(lambda s, t: kd_kl_loss(s[:1], t[:1], 10.0) * 0.5, student, teacher, dtype=dtype,
           relative=TOLERANCE[dtype] * 8)


def test_logit_kd_under_cpu_autocast_matches_float32():
    """The dtype mixing CUDA's autocast causes, on the CPU: a conv student under bfloat16 autocast gives
    bfloat16 logits; every KD loss still returns float32 close to the float32 step."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 4, 3, padding=1)
    data = torch.randn(2, 2, 6, 8, 8) * 10
    _, teacher = _logits(scale=20.0)
    for kind in KD_LOSSES:
        reference = kd_loss(conv(data), teacher, 1.0, kind)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = conv(data)
            assert logits.dtype == torch.bfloat16
            value = kd_loss(logits, teacher.bfloat16(), 1.0, kind)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        assert value.item() == pytest.approx(reference.item(), rel=0.05, abs=0.05)
