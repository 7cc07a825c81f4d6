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


# ---------------------------------------------------------------- every method's KD step under autocast
def _method_trainer(method: str, student, teacher_channels, teachers: int = 1):
    """A method's trainer with the state its `distillation_terms` reads, set up as `build_kd_helpers` and
    `setup_teachers` would (no nnU-Net run: those need plans, data and a teacher on disk)."""
    from types import SimpleNamespace

    from nnkd.distill.feature import FeatureProjectors
    from nnkd.distill.multi_teacher import FeatureStandardizer, LossBalancer, TeacherAdaptor
    from nnkd.distill.reprogramming import Reprogramming
    from nnkd.trainers.lorkd import nnKDTrainer_LoRKD
    from nnkd.trainers.methods import METHODS

    cls = nnKDTrainer_LoRKD if method == "lorkd" else METHODS[method]
    trainer = object.__new__(cls)
    student_channels = [4, 8, 16]
    trainer.network, trainer.is_ddp = student, False
    trainer.label_manager = SimpleNamespace(has_regions=False)
    trainer.current_epoch, trainer.num_epochs = 0, 10
    trainer.loss = lambda outputs, target: torch.nn.functional.cross_entropy(outputs.float(), target)
    trainer.distilled_stages, trainer.paired_teacher_stages = [1, 2], [1, 2]
    if method in ("feature", "tskd"):
        trainer.kd_helpers = FeatureProjectors([8, 16], teacher_channels[1:], 3)
    if method in ("cka", "drd"):
        trainer.stage_weights = torch.ones(2)
    if method == "drd":
        trainer.reprogrammed_stages, trainer.reprogram_sources = [1], [1]
        trainer.kd_helpers = Reprogramming([teacher_channels[1]], [student_channels[1]], 3)
    if method == "multiteacher":
        trainer.teacher_names = [f"t{k}" for k in range(teachers)]
        trainer.chosen_teacher_stages, trainer.student_stages = [2] * teachers, [2] * teachers
        trainer.logit_teachers = [True] * teachers
        helpers = torch.nn.Module()
        helpers.standardizers = torch.nn.ModuleList(FeatureStandardizer(teacher_channels[2], "phi-s")
                                                    for _ in range(teachers))
        helpers.adaptors = torch.nn.ModuleList(TeacherAdaptor(16, s.out_channels, 3) for s in helpers.standardizers)
        helpers.balancer = LossBalancer(teachers, "uncertainty")
        trainer.kd_helpers = helpers
    if method == "lorkd":
        trainer.training_tasks = [SimpleNamespace(index=0, name="a", teacher=object(), label_manager=trainer.label_manager)]
        trainer.loss = SimpleNamespace(last={0: torch.tensor(0.5)})
    return trainer


@pytest.mark.parametrize("method", ["logit", "feature", "cka", "drd", "multiteacher", "tskd", "lorkd"])
def test_every_methods_kd_step_under_cpu_bfloat16_autocast_matches_float32(method):
    """Each method's distillation terms in a step where the student (and the teacher) ran under
    torch.autocast("cpu", bfloat16), as CUDA's autocast mixes dtypes: every term finite, float32, within
    bfloat16's rounding of the float32 step, and the student's gradients finite."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnkd.models.lorkd import TaskOutputs
    from nnkd.teachers.base import TeacherOutput
    from nnkd.trainers.nnkd_trainer import KDStep

    torch.manual_seed(0)
    student = PlainConvUNet(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], [1, 1, 1], 3, [1, 1], True,
                            torch.nn.InstanceNorm3d, {"affine": True}, nonlin=torch.nn.LeakyReLU)
    teacher_net = PlainConvUNet(1, 3, [6, 12, 24], torch.nn.Conv3d, 3, [1, 2, 2], [1, 1, 1], 3, [1, 1], True,
                                torch.nn.InstanceNorm3d, {"affine": True}, nonlin=torch.nn.LeakyReLU)
    data = torch.randn(2, 1, 8, 16, 16) * 3
    target = torch.randint(0, 3, (2, 8, 16, 16))
    teachers = 2 if method == "multiteacher" else 1
    trainer = _method_trainer(method, student, [6, 12, 24], teachers)
    if method == "multiteacher":  # statistics of the teachers' features, as on_train_start gathers them
        with torch.no_grad():
            for standardizer in trainer.kd_helpers.standardizers:
                standardizer.accumulate(teacher_net.encoder(data)[2].float())
                standardizer.fit()

    def step():
        with torch.no_grad():
            skips = teacher_net.encoder(data)
            teacher = TeacherOutput(list(skips), teacher_net.decoder(skips) * 4)
        features = student.encoder(data)
        logits = student.decoder(features)
        outputs, taught = logits, teacher
        if method == "multiteacher":
            taught = [teacher] * teachers
        if method == "lorkd":
            outputs, taught = {0: TaskOutputs(torch.arange(2), logits)}, {0: teacher}
        return trainer.distillation_terms(KDStep(data, target, outputs, features, taught)), logits

    reference, _ = step()
    student.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms, logits = step()
    assert logits.dtype == torch.bfloat16 and set(terms) == set(reference)
    for name, value in terms.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), (name, value)
        assert value.item() == pytest.approx(reference[name].item(), rel=0.08, abs=0.02), name
    sum(terms.values()).backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
