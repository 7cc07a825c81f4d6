"""Multi-teacher distillation: standardisation, balancing, and training from an nnU-Net, a 2D SAM and a
TorchScript teacher at once."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import PLANNED_ID, QUICK_TRAINING, run_cli, run_fold, training_env, refuse_in_process
from helpers.tiny_teachers import save_sam_checkpoint, tiny_sam_encoder
from nnkd.distill.multi_teacher import FeatureStandardizer, LossBalancer, TeacherAdaptor, adaptor_loss
from nnkd.plans import network_from_plans
from nnkd.checkpoints import load_checkpoint

TRAINER = "nnKDTrainer_MultiTeacher"


def _correlated_features(scale: float, channels: int = 6, seed: int = 0) -> torch.Tensor:
    """(2, C, 4, 8, 8) features with correlated channels, an offset and very unequal variances."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(channels, channels, generator=generator) * torch.logspace(0, 2, channels)
    rows = torch.randn(2 * 4 * 8 * 8, channels, generator=generator) @ mixing.T + 5.0
    return scale * rows.reshape(2, 4, 8, 8, channels).movedim(-1, 1)


def _fitted(features: torch.Tensor, mode: str) -> FeatureStandardizer:
    standardizer = FeatureStandardizer(features.shape[1], mode)
    standardizer.accumulate(features[:1])
    standardizer.accumulate(features[1:])
    standardizer.fit()
    return standardizer


@pytest.mark.parametrize("mode, out_channels", [("phi-s", 8), ("channel", 6)])
def test_standardisation_gives_every_teacher_zero_mean_unit_variance_whatever_its_scale(mode, out_channels):
    for scale in (1e-3, 1.0, 1e3):
        features = _correlated_features(scale)
        standardized = _fitted(features, mode)(features).double()
        assert standardized.shape == (2, out_channels, 4, 8, 8)
        rows = standardized.movedim(1, -1).reshape(-1, out_channels)
        assert rows.mean(0).abs().max() < 1e-3
        assert torch.allclose(rows.var(0, unbiased=False), torch.ones(out_channels, dtype=torch.float64), atol=1e-3)


def test_phi_s_is_one_rotation_and_one_scale_so_the_geometry_of_the_features_is_kept():
    features = _correlated_features(1.0)
    standardized = _fitted(features, "phi-s")(features)
    x = features.movedim(1, -1).reshape(-1, 6)[:50].double()
    y = standardized.movedim(1, -1).reshape(-1, 8)[:50].double()
    ratio = torch.cdist(y, y)[~torch.eye(50, dtype=torch.bool)] / torch.cdist(x, x)[~torch.eye(50, dtype=torch.bool)]
    assert ratio.std() / ratio.mean() < 1e-4  # all pairwise distances scaled by the same factor
    channel = _fitted(features, "channel")(features).movedim(1, -1).reshape(-1, 6)[:50].double()
    ratio = torch.cdist(channel, channel)[~torch.eye(50, dtype=torch.bool)] / \
        torch.cdist(x, x)[~torch.eye(50, dtype=torch.bool)]
    assert ratio.std() / ratio.mean() > 1e-2  # per-channel z-scores stretch some directions more than others


def test_standardizer_refuses_to_fit_without_features_and_none_is_the_identity():
    with pytest.raises(ValueError, match="no teacher features"):
        FeatureStandardizer(4, "phi-s").fit()
    identity = FeatureStandardizer(4, "none")
    x = torch.randn(1, 4, 3, 3)
    assert identity.is_fitted and torch.equal(identity(x), x)


def _train_balancer(balancer: LossBalancer, losses: list[float], steps: int = 1500) -> torch.Tensor:
    optimizer = torch.optim.SGD(balancer.parameters(), lr=0.2) if list(balancer.parameters()) else None
    for _ in range(steps):
        if optimizer is None:
            break
        optimizer.zero_grad()
        balancer(torch.tensor(losses)).backward()
        optimizer.step()
    return balancer.weights().detach()


def test_fixed_weights_stay_as_given():
    balancer = LossBalancer(2, "fixed", weights=(0.3, 2.0))
    assert torch.allclose(_train_balancer(balancer, [1.0, 4.0]), torch.tensor([0.3, 2.0]))
    assert balancer(torch.tensor([1.0, 4.0])).item() == pytest.approx(0.3 + 8.0)
    with pytest.raises(ValueError, match="1 fixed weight"):
        LossBalancer(2, "fixed", weights=(1.0,))


def test_uncertainty_weights_tend_to_the_inverse_loss():
    weights = _train_balancer(LossBalancer(2, "uncertainty"), [0.5, 4.0])
    assert torch.allclose(weights, torch.tensor([2.0, 0.25]), rtol=0.02)


def test_learned_weights_tend_to_a_softmax_of_minus_the_loss_and_the_value_is_the_weighted_sum():
    balancer = LossBalancer(3, "learned", temperature=0.5)
    losses = [0.2, 0.6, 1.4]
    weights = _train_balancer(balancer, losses)
    expected = 3 * torch.softmax(-torch.tensor(losses) / 0.5, 0)
    assert torch.allclose(weights, expected, rtol=0.02)
    assert abs(weights.sum().item() - 3) < 1e-5

    student_losses = torch.tensor(losses, requires_grad=True)
    total = balancer(student_losses)
    total.backward()
    assert total.item() == pytest.approx((weights * torch.tensor(losses)).sum().item(), rel=1e-5)
    assert torch.allclose(student_losses.grad, weights, rtol=1e-5)  # the student sees the current weights


def test_adaptor_loss_is_zero_only_for_a_perfect_match():
    adaptor = TeacherAdaptor(4, 8, spatial_dims=3)
    target = adaptor(torch.randn(1, 4, 2, 3, 3)).detach()
    assert adaptor_loss(target, target).item() == pytest.approx(0, abs=1e-6)
    assert adaptor_loss(target, -target).item() > 2


class _TinyScriptedSegNet(nn.Module):
    """A 3D TorchScript teacher without labels (features only)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(1, 6, 3, stride=2, padding=1)
        self.deep = nn.Conv3d(6, 12, 3, stride=2, padding=1)
        self.head = nn.Conv3d(12, 2, 1)

    def forward(self, x):
        return nn.functional.interpolate(self.head(self.deep(self.stem(x))), scale_factor=4.0)


@pytest.fixture(scope="module")
def three_teachers(teacher, tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    sam = save_sam_checkpoint(tiny_sam_encoder(), folder / "sam_vit_b_01ec64.pth")
    torch.manual_seed(0)
    scripted = folder / "segnet.pt"
    torch.jit.save(torch.jit.script(_TinyScriptedSegNet().eval()), str(scripted))
    return [teacher["spec"], f"sam:{sam}?slices=4", f"torchscript:{scripted}?features=stem,deep&probe=16"]


def _log(fold: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))


def _helpers(checkpoint: Path) -> dict:
    return load_checkpoint(checkpoint)["nnkd"]["helpers"]


def test_three_teachers_of_three_families_train_one_student_and_resume_keeps_their_state(
        planned, three_teachers, tmp_path):
    env = training_env({**planned["env"], "nnUNet_results": str(tmp_path / "results")})
    args = ["nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "multiteacher"]
    teachers = [a for spec in three_teachers for a in ("--teacher", spec)]
    run_cli(*args, *teachers, "--hp", "balance=uncertainty", *QUICK_TRAINING, env=env)
    fold = run_fold(tmp_path / "results" / "Dataset991_Synthetic", TRAINER)
    log = _log(fold)
    names = ["t0_nnunet", "t1_sam", "t2_torchscript"]
    for name in names:
        assert f"multiteacher: {name} feature statistics (phi-s) from 4 batch(es)" in log
    assert "t0_nnunet (nnunet:" in log and "plus logit KD" in log.split("t1_sam (")[0]
    assert "t2_torchscript (torchscript:" in log and "stage 1 (12 channels)" in log
    record = json.loads((fold / "teacher.json").read_text())
    assert [e["spec"] for e in record["teachers"]] == three_teachers and record["teacher"] is None
    assert all(e["sha256"] for e in record["teachers"])
    line = next(line for line in log.splitlines() if "distillation:" in line)
    assert all(f"kd_{n}" in line and f"weight_{n}" in line for n in names) and "kd_teachers" in line

    first = _helpers(fold / "checkpoint_final.pth")
    assert set(first["balancer.log_variance"].shape) == {3}
    assert first["standardizers.1.projection"].shape == (16, 16)  # SAM's 16-channel neck: 16 = 2⁴
    assert first["standardizers.2.projection"].shape == (16, 12)  # 12 channels padded to 16
    checkpoint = load_checkpoint(fold / "checkpoint_final.pth")
    assert checkpoint["nnkd"]["kd_log"]["weight_t1_sam"]
    plans = json.loads((fold.parent / "plans.json").read_text())
    dataset_json = json.loads((fold.parent / "dataset.json").read_text())
    network_from_plans(plans, "3d_fullres", dataset_json, deep_supervision=True).load_state_dict(
        checkpoint["network_weights"])  # adaptors are not part of the student
    assert (fold / "progress_kd.png").is_file()

    run_cli(*args, "--c", *QUICK_TRAINING[:1], "2", *QUICK_TRAINING[2:], env=env)
    resumed = _log(fold)
    assert resumed.count("feature statistics") == 3  # not estimated again
    second = _helpers(fold / "checkpoint_final.pth")
    for key in first:
        if key.startswith("standardizers"):
            assert torch.equal(first[key], second[key]), key
    assert not torch.equal(first["balancer.log_variance"], second["balancer.log_variance"])  # it kept learning
    latest = json.loads((fold / "teacher.json").read_text())
    assert latest["schedule"]["num_epochs"] == 2
    refused = run_cli(*args, "--c", "--teacher", three_teachers[0], *QUICK_TRAINING, env=env, check=False)
    assert refused.returncode != 0 and "this run was started with teacher" in refused.stderr


def test_fixed_weights_and_two_teachers_and_clear_errors(planned, three_teachers, tmp_path):
    env = training_env({**planned["env"], "nnUNet_results": str(tmp_path / "results")})
    args = ["nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny"]
    two = ["--teacher", three_teachers[0], "--teacher", three_teachers[1]]
    refused = refuse_in_process(*args, "--method", "logit", *two, *QUICK_TRAINING, env=env)
    assert refused.returncode != 0 and "distils one teacher, 2 --teacher were given" in refused.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("teacher.json"))
    bad = refuse_in_process(*args, "--method", "multiteacher", *two, "--hp", "teacher_weights=1,2,3", *QUICK_TRAINING,
                            env=env)
    assert bad.returncode != 0 and "teacher_weights has 3 value(s) for 2 teacher(s)" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "results").exists()  # refused before writing

    run_cli(*args, "--method", "multiteacher", *two, "--hp", "teacher_weights=0.25,4",
            "--hp", "standardization=channel", *QUICK_TRAINING, env=env)
    fold = run_fold(tmp_path / "results" / "Dataset991_Synthetic", TRAINER)
    kd_log = load_checkpoint(fold / "checkpoint_final.pth")["nnkd"]["kd_log"]
    assert kd_log["weight_t0_nnunet"] == [0.25] and kd_log["weight_t1_sam"] == [4.0]
    assert math.isclose(kd_log["kd_teachers"][0], 0.25 * kd_log["kd_t0_nnunet"][0] + 4 * kd_log["kd_t1_sam"][0],
                        rel_tol=1e-4)
    assert "feature statistics (channel)" in _log(fold)


def test_the_benchmark_gives_multiteacher_every_teacher_and_labels_it_by_their_number():
    from nnkd.benchmark.report import _method_label
    from nnkd.benchmark.runs import Run, run_teachers
    from nnkd.benchmark.study import BenchmarkRequest

    request = BenchmarkRequest(output=Path("out"), teacher="nnunet:/a", extra_teachers=("sam:/b", "deepbet"))
    assert run_teachers(Run("tiny", "multiteacher"), request) == ["nnunet:/a", "sam:/b", "deepbet"]
    assert run_teachers(Run("tiny", "logit"), request) == ["nnunet:/a"]
    assert run_teachers(Run("tiny", "none"), request) == []
    assert _method_label({"method": "multiteacher", "cached": False, "teachers": 3}) == "multiteacher (3 teachers)"
