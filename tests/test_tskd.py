"""TS-KD: LoRA task tuning of a foundation teacher (peft), the tuned teacher with logits, and tskd training
that mixes labelled and transfer-set cases."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import PLANNED_ID, QUICK_TRAINING, run_cli, run_fold, training_env, refuse_in_process
from helpers.tiny_teachers import save_sam_checkpoint, tiny_sam_encoder
from nnkd.teachers.registry import create_teacher
from nnkd.teachers.tuned import SegmentationHead, TunedSegmenter, add_lora
from nnkd.trainers.methods import nnKDTrainer_TSKD

TUNER = "nnKDTeacherTuner__nnUNetPlans__3d_fullres"


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory) -> str:
    return save_sam_checkpoint(tiny_sam_encoder(), tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth")


def test_lora_trains_only_the_attention_projections_and_the_base_stays_frozen(sam_checkpoint):
    teacher = create_teacher(f"sam:{sam_checkpoint}?slices=2")
    base = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    adapted = add_lora(teacher, rank=4, alpha=8)
    segmenter = TunedSegmenter(adapted, SegmentationHead(16, 3, spatial_dims=3, hidden=8))
    trainable = {name: p for name, p in segmenter.named_parameters() if p.requires_grad}
    lora = {name for name in trainable if "lora_" in name}
    assert lora and all(".attn.qkv.lora_" in n or ".attn.proj.lora_" in n for n in lora)
    assert set(trainable) - lora == {n for n, _ in segmenter.head.named_parameters(prefix="head")}
    # r·(in + out) per adapted linear: qkv 32→96 and proj 32→32 in each of the 3 blocks
    assert sum(trainable[n].numel() for n in lora) == 3 * 4 * ((32 + 96) + (32 + 32))

    optimizer = torch.optim.SGD(trainable.values(), lr=0.1)
    for _ in range(2):  # B starts at zero: the second step moves A too
        optimizer.zero_grad()
        segmenter(torch.randn(1, 1, 8, 32, 32)).square().mean().backward()
        optimizer.step()
    after = {n.replace(".base_layer", ""): p for n, p in adapted.base_model.model.named_parameters()}
    for name, value in base.items():
        assert torch.equal(after[name], value), name  # frozen base weights untouched
    assert all(trainable[n].abs().sum() > 0 for n in lora)
    assert set(segmenter.state_dict()) == set(trainable)  # its checkpoints hold only what trains


def test_tune_then_tuned_teacher_has_logits_then_tskd_trains_on_labelled_and_transfer_cases(
        planned, sam_checkpoint, tmp_path):
    env = training_env({**planned["env"], "nnUNet_results": str(tmp_path / "results")})
    spec = f"sam:{sam_checkpoint}?slices=4"
    result = run_cli("nnkd_tune_teacher", "-d", PLANNED_ID, "-c", "3d_fullres", "-f", "0", "--teacher", spec,
                     "--lora-rank", "4", "--labeled", "2", "--seed", "3", *QUICK_TRAINING, env=env)
    fold = tmp_path / "results" / "Dataset991_Synthetic" / TUNER / "fold_0"
    tuning = json.loads((fold / "tuning.json").read_text())
    assert tuning["seed"] == 3 and tuning["versions"]["nnkd"]
    assert "nnkd: random seed 3" in "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert f"tuned teacher tuned:{fold}" in result.stdout
    assert len(json.loads((fold / "labeled_cases.json").read_text())["cases"]) == 2
    record = json.loads((fold / "tuned_teacher" / "tuned_teacher.json").read_text())
    assert record["base_spec"] == spec and record["lora"]["rank"] == 4 and 0 <= record["validation_dice"] <= 1
    assert (fold / "tuned_teacher" / "adapter" / "adapter_config.json").is_file()
    assert (fold / "checkpoint_final.pth").stat().st_size < Path(sam_checkpoint).stat().st_size

    teacher = create_teacher(f"tuned:{fold}")
    dataset_labels = json.loads((planned["preprocessed"] / "dataset.json").read_text())["labels"]
    assert teacher.has_logits and teacher.labels == dataset_labels
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        output = teacher(x)
    assert output.logits.shape == (1, len(dataset_labels), 16, 32, 32)
    assert [f.shape[1] for f in output.features] == [32, 16]
    lora_b = [p for n, p in teacher.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the trained adapter, not a fresh one

    # the transfer set: two unlabelled NIfTI images (preprocessed by nnkd_train into nnkd's own folder) and a
    # "synthetic" set of two preprocessed cases copied under new names (nnU-Net's format, labels unused)
    images = tmp_path / "unlabeled_images"
    images.mkdir()
    raw_images = Path(env["nnUNet_raw"]) / "Dataset991_Synthetic" / "imagesTr"
    for source in sorted(raw_images.glob("case_00[23]_0000.nii.gz")):
        shutil.copy(source, images / source.name.replace("case_", "more_"))
    synthetic = tmp_path / "synthetic_set"
    synthetic.mkdir()
    for source in sorted(planned["preprocessed"].glob("nnUNetPlans_3d_fullres/case_00[01][._]*")):
        shutil.copy(source, synthetic / source.name.replace("case_", "extra_"))
    run_cli("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "tskd",
            "--teacher", f"tuned:{fold}", "--unlabeled", images, "--synthetic", synthetic, "--labeled", "2",
            *QUICK_TRAINING, env=env)
    student = run_fold(tmp_path / "results" / "Dataset991_Synthetic", "nnKDTrainer_TSKD")
    log = "\n".join(p.read_text() for p in student.glob("training_log_*.txt"))
    # 2 unlabelled + 2 synthetic + the 4 training cases of the fold that --labeled 2 left unlabelled
    assert "tskd: each step 2 labelled + 2 transfer sample(s); transfer set: 8 case(s)" in log
    assert "(the 4 training case(s) --labeled left unlabelled)" in log
    line = next(line for line in log.splitlines() if "distillation:" in line)
    assert "kd_logit" in line and "kd_feature" in line
    transfer = json.loads((student / "teacher.json").read_text())["transfer"]
    assert transfer[1] == str(synthetic) and "nnkd_transfer" in transfer[0]
    assert sorted(p.name for p in Path(transfer[0]).glob("*.pkl")) == ["more_002.pkl", "more_003.pkl"]

    refused = refuse_in_process("nnkd_train", PLANNED_ID, "3d_fullres", "0", "--budget", "tiny", "--method", "logit",
                                "--teacher", f"tuned:{fold}", "--synthetic", synthetic, *QUICK_TRAINING, env=env)
    assert refused.returncode != 0 and "--method tskd" in refused.stderr


def test_transfer_samples_get_no_segmentation_loss():
    calls = []

    def loss(outputs, target):
        calls.append((outputs, target))
        return sum(((o.float() - t.float()) ** 2).sum() for o, t in zip(outputs, target))

    trainer = SimpleNamespace(loss=loss)
    outputs = [torch.randn(4, 3, 8, 8, 8, requires_grad=True), torch.randn(4, 3, 4, 4, 4, requires_grad=True)]
    target = [torch.zeros(4, 3, 8, 8, 8), torch.zeros(4, 3, 4, 4, 4)]
    value = nnKDTrainer_TSKD.segmentation_loss(trainer, outputs, target, {"labeled_count": 2})
    value.backward()
    assert all(o.shape[0] == 2 for o in calls[0][0]) and all(t.shape[0] == 2 for t in calls[0][1])
    for level in outputs:
        assert level.grad[:2].abs().sum() > 0 and torch.count_nonzero(level.grad[2:]) == 0
    changed = [t.clone() for t in target]
    for t in changed:
        t[2:] = 5  # whatever transfer targets hold, the loss is the same
    assert nnKDTrainer_TSKD.segmentation_loss(trainer, outputs, changed, {"labeled_count": 2}).item() == \
        pytest.approx(value.item())
