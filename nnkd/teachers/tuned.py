"""A foundation teacher tuned to the task (TS-KD step 1): LoRA adapters (peft) on its attention projections and
a light segmentation head, so a feature-only encoder teaches with logits. `nnkd_tune_teacher` makes one;
`tuned:FOLDER` loads it.

A tuned-teacher folder holds `adapter/` (peft's `save_pretrained`), `head.pth` (the head's weights) and
`tuned_teacher.json` (the base spec, LoRA and head settings, labels, the plans configuration it was tuned on
and its validation Dice). The base weights stay in the base checkpoint; the folder holds only what was trained.
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nnkd.errors import NnkdError
from nnkd.teachers.base import Teacher, TeacherOutput
from nnkd.checkpoints import load_checkpoint
from nnkd.teachers.registry import create_teacher, register_teacher

TUNED_FILE = "tuned_teacher.json"
TUNED_FOLDER = "tuned_teacher"  # inside the tuner's fold folder
ADAPTER_FOLDER = "adapter"
HEAD_FILE = "head.pth"


class SegmentationHead(nn.Module):
    """conv3 → InstanceNorm → LeakyReLU → conv1 on the teacher's last stage, upsampled to the patch: light on
    purpose, so the segmentation has to come from the (LoRA-adapted) encoder."""

    def __init__(self, channels: int, num_classes: int, spatial_dims: int, hidden: int = 32):
        super().__init__()
        conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if spatial_dims == 3 else (nn.Conv2d, nn.InstanceNorm2d)
        self.layers = nn.Sequential(conv(channels, hidden, 3, padding=1), norm(hidden, affine=True),
                                    nn.LeakyReLU(0.01, inplace=True), conv(hidden, num_classes, 1))

    def forward(self, features: torch.Tensor, size) -> torch.Tensor:
        logits = self.layers(features)
        mode = "trilinear" if logits.ndim == 5 else "bilinear"
        return F.interpolate(logits, size=tuple(size), mode=mode, align_corners=False)


def add_lora(teacher: Teacher, rank: int, alpha: float):
    """The teacher with peft LoRA adapters on its attention projections; everything else stays frozen."""
    if not teacher.lora_targets:
        raise NnkdError(f"teacher {teacher.spec} has no attention projections for LoRA",
                        "tune a transformer teacher: sam, medsam, sam-med3d, dinov2, rad-dino, swin or medclip")
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise NnkdError("tuning a teacher needs the peft package", "pip install 'nnkd[tskd]'") from e
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                        target_modules=list(teacher.lora_targets))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return get_peft_model(teacher, config)


def is_trained_key(key: str) -> bool:
    """LoRA matrices and the head: the parts of a tuned teacher that training changes."""
    return "lora_" in key or key.startswith("head.")


class TunedSegmenter(nn.Module):
    """The LoRA-adapted teacher plus its head, patch → logits: what the tuner trains through nnU-Net's loss and
    predictor. Its state dict holds only the trained parts (the frozen base comes from its own checkpoint), so
    nnU-Net's checkpoints of it stay small."""

    def __init__(self, adapted_teacher: nn.Module, head: SegmentationHead):
        super().__init__()
        self.teacher = adapted_teacher
        self.head = head

    def features_and_logits(self, x: torch.Tensor) -> TeacherOutput:
        output = self.teacher(x)
        return TeacherOutput(output.features, self.head(output.features[-1], x.shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x).logits

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for key in [k for k in state if k.startswith(prefix) and not is_trained_key(k[len(prefix):])]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if is_trained_key(k)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"tuned teacher weights do not fit: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
        return result

    def save(self, folder: Path, record: dict) -> None:
        """Write the adapter, the head and the record into `folder` (a staging folder the caller renames)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.teacher.save_pretrained(str(folder / ADAPTER_FOLDER))
        torch.save(self.head.state_dict(), folder / HEAD_FILE)
        (folder / TUNED_FILE).write_text(json.dumps(record, indent=2))


class TunedTeacher(Teacher):
    """A tuned teacher: the base's stage features (LoRA-adapted) and the head's logits for the tuned labels."""

    def __init__(self, segmenter: TunedSegmenter, record: dict):
        super().__init__()
        base = segmenter.teacher.base_model.model
        self.segmenter = segmenter
        self.spatial_dims = record["head"]["spatial_dims"]
        self.in_channels = base.in_channels
        self.feature_channels = list(base.feature_channels)
        self.feature_strides = list(base.feature_strides)
        self.labels = dict(record["labels"])
        self.plans_configuration = record["plans_configuration"]
        self.record = record

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        return self.segmenter.features_and_logits(x)

    def describe(self) -> dict:
        return super().describe() | {"base": self.record["base_spec"], "lora": self.record["lora"],
                                     "validation_dice": self.record.get("validation_dice")}


def tuned_folder(path: str) -> Path:
    """The folder with tuned_teacher.json: the path itself, or the tuner's fold folder around it."""
    folder = Path(path)
    for candidate in (folder, folder / TUNED_FOLDER):
        if (candidate / TUNED_FILE).is_file():
            return candidate
    raise NnkdError(f"{path} is not a tuned teacher (no {TUNED_FILE})",
                    "make one with nnkd_tune_teacher, then pass tuned:<its fold folder>")


@register_teacher("tuned")
def build_tuned(path: str, options: dict, fold=None, device="cpu", **_) -> TunedTeacher:
    """A teacher tuned by nnkd_tune_teacher (TS-KD): base encoder + LoRA adapter + segmentation head, with logits."""
    folder = tuned_folder(path)
    try:
        record = json.loads((folder / TUNED_FILE).read_text())
        base = create_teacher(record["base_spec"], fold=fold, device="cpu")
    except (ValueError, KeyError) as e:
        raise NnkdError(f"{folder / TUNED_FILE} is corrupt ({e})", "tune the teacher again") from e
    if record.get("base_sha256") and base.checkpoint_sha256 and record["base_sha256"] != base.checkpoint_sha256:
        raise NnkdError(f"the base checkpoint {base.checkpoint_path} changed since the teacher was tuned",
                        "restore it, or tune the teacher again")
    try:
        from peft import PeftModel
    except ImportError as e:
        raise NnkdError("the tuned teacher needs the peft package", "pip install 'nnkd[tskd]'") from e
    adapter = folder / ADAPTER_FOLDER
    try:
        adapted = PeftModel.from_pretrained(base, str(adapter))
    except (OSError, ValueError, RuntimeError) as e:
        raise NnkdError(f"the LoRA adapter in {adapter} does not load: {str(e).splitlines()[0][:200]}",
                        "tune the teacher again") from e
    head_settings = record["head"]
    head = SegmentationHead(base.feature_channels[-1], head_settings["outputs"], head_settings["spatial_dims"],
                            head_settings["hidden"])
    try:
        head.load_state_dict(load_checkpoint(folder / HEAD_FILE))
    except RuntimeError as e:
        raise NnkdError(f"{folder / HEAD_FILE} does not fit the head recorded in {TUNED_FILE}",
                        "tune the teacher again") from e
    teacher = TunedTeacher(TunedSegmenter(adapted, head), record)
    teacher.set_checkpoint(*[p for p in (base.checkpoint_path or "").split(";") if p],
                           *sorted(adapter.glob("adapter_model.*")), folder / HEAD_FILE)
    return teacher.to(device)
