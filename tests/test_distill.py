"""The distillation mechanics on their own, on random tensors."""

import pytest
import torch

from nnkd.distill.feature import FeatureProjectors, feature_distance, pair_stages_by_resolution, resize_to
from nnkd.distill.logits import kd_kl_loss


@pytest.mark.parametrize("regions", [False, True])
def test_kd_loss_is_zero_when_logits_agree_and_positive_otherwise(regions):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 8, 8)
    assert kd_kl_loss(logits, logits.clone(), temperature=3.0, regions=regions).item() == pytest.approx(0, abs=1e-6)
    other = torch.randn(2, 4, 6, 8, 8)
    assert kd_kl_loss(logits, other, temperature=3.0, regions=regions).item() > 1e-3


def test_kd_loss_gradient_pulls_the_student_towards_the_teacher():
    torch.manual_seed(1)
    teacher = torch.randn(1, 3, 4, 4, 4)
    student = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    before = kd_kl_loss(student, teacher, 2.0)
    before.backward()
    with torch.no_grad():
        stepped = student - 0.5 * student.grad
    assert kd_kl_loss(stepped, teacher, 2.0) < before


def test_kd_loss_is_float32_under_half_precision_inputs():
    logits = torch.randn(1, 3, 4, 4).half()
    assert kd_kl_loss(logits, logits.flip(1), 3.0).dtype == torch.float32


def test_same_strides_pair_identically_and_coarser_teachers_pair_by_resolution():
    strides = [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]
    assert pair_stages_by_resolution(strides, strides) == [0, 1, 2, 3]
    teacher = [(2, 2, 2), (4, 4, 4), (8, 8, 8)]
    assert pair_stages_by_resolution(strides, teacher) == [0, 0, 1, 2]


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_feature_distance_zero_for_equal_features(kind):
    x = torch.randn(2, 5, 4, 4, 4)
    assert feature_distance(x, x.clone(), kind).item() == pytest.approx(0, abs=1e-5)
    assert feature_distance(x, torch.randn_like(x), kind).item() > 0.1


def test_projectors_map_student_channels_to_teacher_channels_and_resize():
    projectors = FeatureProjectors([8, 16], [32, 64], spatial_dims=3)
    out = projectors([torch.randn(1, 8, 8, 8, 8), torch.randn(1, 16, 4, 4, 4)])
    assert [o.shape[1] for o in out] == [32, 64]
    assert resize_to(out[1], (8, 8, 8)).shape == (1, 64, 8, 8, 8)
