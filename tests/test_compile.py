"""The student under torch.compile (the inductor CPU backend), as nnU-Net compiles it on a GPU: nnkd's
unwrapping (`student_network`, `student_forward`) gives the same loss and gradients as the eager student,
for a feature method (encoder and decoder called directly) and a logit method (through the compiled
module), and the weights nnkd saves keep stock names (no `_orig_mod.`)."""

from types import SimpleNamespace

import pytest
import torch

from nnkd.distill.feature import FeatureProjectors, feature_distance
from nnkd.distill.logits import kd_loss
from nnkd.trainers.nnkd_trainer import nnKDTrainer


def _student():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    return PlainConvUNet(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], [1, 1, 1], 3, [1, 1], True,
                         torch.nn.InstanceNorm3d, {"affine": True}, nonlin=torch.nn.LeakyReLU)


def _trainer(network, needs_features: bool):
    """The trainer attributes nnkd's unwrapping reads; its methods are nnKDTrainer's own."""
    trainer = SimpleNamespace(network=network, is_ddp=False, needs_student_features=needs_features)
    trainer.student_network = lambda: nnKDTrainer.student_network(trainer)
    return trainer


def _step(trainer, data, target, teacher_logits, teacher_features, helpers):
    features, logits = nnKDTrainer.student_forward(trainer, data)
    loss = torch.nn.functional.cross_entropy(logits, target) + kd_loss(logits, teacher_logits, 1.0, "kl")
    if features is not None:
        loss = loss + sum(feature_distance(p, t, "mse") for p, t in zip(helpers(features), teacher_features))
    loss.backward()
    module = trainer.student_network()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("needs_features", [True, False], ids=["feature", "logit"])
def test_compiled_student_step_equals_the_eager_step(needs_features):
    torch.manual_seed(1)
    data = torch.randn(2, 1, 8, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8, 8))
    teacher_logits = torch.randn(2, 3, 8, 8, 8) * 5
    teacher_features = [torch.randn(2, c, 8 // 2 ** i, 8 // 2 ** i, 8 // 2 ** i) for i, c in enumerate([6, 12, 24])]
    torch.manual_seed(2)
    helpers = FeatureProjectors([4, 8, 16], [6, 12, 24], 3)

    eager = _trainer(_student(), needs_features)
    compiled = _trainer(torch.compile(_student(), backend="inductor"), needs_features)
    assert nnKDTrainer.student_network(compiled) is compiled.network._orig_mod

    loss_eager, grads_eager = _step(eager, data, target, teacher_logits, teacher_features, helpers)
    helpers.zero_grad()
    loss_compiled, grads_compiled = _step(compiled, data, target, teacher_logits, teacher_features, helpers)
    assert torch.allclose(loss_compiled, loss_eager, rtol=1e-4, atol=1e-5)
    assert grads_compiled.keys() == grads_eager.keys()
    for name, grad in grads_eager.items():
        assert torch.allclose(grads_compiled[name], grad, rtol=1e-3, atol=1e-5), name

    saved = nnKDTrainer.student_network(compiled).state_dict()  # what save_checkpoint writes
    assert any(k.startswith("_orig_mod.") for k in compiled.network.state_dict())
    assert not any("_orig_mod" in k for k in saved)
    _student().load_state_dict(saved, strict=True)
