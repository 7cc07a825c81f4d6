"""Channel-wise distillation (CWD): the loss on its own; training from a cache is in test_teacher_cache."""

import pytest
import torch

from nnkd.distill.channel_wise import cwd_loss


def test_cwd_is_zero_for_the_teachers_own_maps_and_positive_otherwise():
    torch.manual_seed(0)
    teacher = torch.randn(2, 4, 6, 7)
    assert cwd_loss(teacher.clone(), teacher).item() == pytest.approx(0, abs=1e-6)
    assert cwd_loss(torch.randn(2, 4, 6, 7), teacher).item() > 0.01


def test_cwd_compares_where_each_class_lies_not_how_confident_it_is():
    """A channel shifted by a constant has the same spatial distribution (softmax over positions); moving
    the class's peak to another position costs."""
    teacher = torch.zeros(1, 2, 5, 5)
    teacher[0, 0, 1, 1] = teacher[0, 1, 3, 3] = 8.0
    shifted = teacher + torch.tensor([3.0, -2.0]).view(1, 2, 1, 1)
    assert cwd_loss(shifted, teacher).item() == pytest.approx(0, abs=1e-5)
    moved = teacher.clone()
    moved[0, 1, 3, 3], moved[0, 1, 0, 4] = 0.0, 8.0
    assert cwd_loss(moved, teacher).item() > 1.0


def test_cwd_weighs_a_small_class_like_a_large_one():
    """Per channel the loss is a KL between distributions, whatever the class's size: a one-voxel class
    missed costs as much as a large class shifted by the same logit pattern."""
    teacher = torch.full((1, 2, 8, 8), -4.0)
    teacher[0, 0, :, :4] = 4.0  # a large class: half the image
    teacher[0, 1, 2, 2] = 4.0  # a one-voxel class
    student = teacher.clone()
    student[0, 1] = -4.0  # misses the small class entirely
    per_class = cwd_loss(student, teacher).item() * 2  # the mean over 2 channels, one of them 0
    assert per_class > 1.0


def test_cwd_leaves_positions_outside_the_mask_out_and_stays_finite_when_all_are_out():
    torch.manual_seed(1)
    teacher, student = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4, requires_grad=True)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, :2] = True  # the second sample has no valid position
    loss = cwd_loss(student, teacher, mask=mask)
    different_outside = teacher.clone()
    different_outside[0, :, 2:] += 5.0
    assert loss.item() == pytest.approx(cwd_loss(student, different_outside, mask=mask).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad[1].abs().max() == 0


def test_cwd_refuses_maps_of_different_shapes():
    with pytest.raises(ValueError, match="one shape"):
        cwd_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))
