"""ONNX export of a student, its sidecar JSON, and an ONNX Runtime module nnU-Net's predictor can drive."""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnkd.atomic import write_bytes_atomic
from nnkd.errors import NnkdError
from nnkd.network_runtimes import max_difference, onnx_bytes, onnxruntime_module, ort_session, run_session


def export_onnx(network: nn.Module, input_channels: int, patch_size, path: Path) -> float:
    """Write `path` with dynamic batch and spatial axes; return the max |ONNX − torch| on a random patch."""

    write_bytes_atomic(path, onnx_bytes(network, input_channels, patch_size))
    return max_difference(network, ort_session(path), input_channels, patch_size)


def onnx_sidecar(plans: dict, configuration: str, dataset_json: dict, input_channels: int,
                 mirror_axes=None) -> dict:
    """What a runtime must feed the ONNX model: nnU-Net's preprocessing of this configuration."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    cm = manager.get_configuration(configuration)
    return {
        "input_name": "input", "output_name": "logits",
        "input_channels": input_channels,
        "channel_names": dataset_json["channel_names"],
        "labels": dataset_json["labels"],
        "intensity_normalization": cm.normalization_schemes,
        "foreground_intensity_properties_per_channel": plans["foreground_intensity_properties_per_channel"],
        "spacing": list(cm.spacing),
        "transpose_forward": list(manager.transpose_forward),
        "patch_size": list(cm.patch_size),
        "spatial_size_divisible_by": [int(s) for s in np.prod(np.array(cm.pool_op_kernel_sizes), axis=0)],
        "output": "logits (batch, classes, *spatial); softmax over classes, argmax = label",
        "inference_allowed_mirroring_axes": list(mirror_axes) if mirror_axes is not None else None,
    }


def onnx_mirror_axes(onnx_file: Path, student) -> list | None:
    """The mirroring axes of nnU-Net's test-time augmentation for an exported ONNX student, from its sidecar
    JSON (an export of an older nnkd lacks them: then from the first fold's checkpoint)."""
    import json

    sidecar = Path(f"{onnx_file}.json")
    if sidecar.is_file():
        record = json.loads(sidecar.read_text())
        if "inference_allowed_mirroring_axes" in record:
            return record["inference_allowed_mirroring_axes"]
    from nnkd.checkpoints import load_checkpoint

    return load_checkpoint(next(iter(student.checkpoints.values()))).get("inference_allowed_mirroring_axes")


class OnnxNetwork(nn.Module):
    """Runs an exported student in ONNX Runtime behind the nn.Module call nnU-Net's predictor makes."""

    def __init__(self, path: Path, input_channels: int):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise NnkdError(f"ONNX file {path} not found", "export it with nnkd_export --onnx")
        onnxruntime_module()
        try:
            self.session = ort_session(path)
        except Exception as e:
            raise NnkdError(f"cannot load ONNX model {path}: {str(e).splitlines()[0][:160]}",
                            "export it again with nnkd_export --onnx") from e
        expected = self.session.get_inputs()[0].shape[1]
        if isinstance(expected, int) and expected != input_channels:
            raise NnkdError(f"{path} takes {expected} channel(s), the model's dataset has {input_channels}",
                            "use the ONNX file exported from this student")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_session(self.session, x)
