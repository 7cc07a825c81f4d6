"""ONNX export of a student, its sidecar JSON, and an ONNX Runtime module nnU-Net's predictor can drive."""

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnkd.errors import NnkdError


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise NnkdError("onnxruntime is not installed", 'pip install "nnkd[onnx]"') from e
    return onnxruntime


def onnx_bytes(network: nn.Module, input_channels: int, patch_size) -> bytes:
    """The network as an ONNX model (opset 17) with dynamic batch and spatial axes, in memory."""
    import io

    network = network.eval().cpu()
    spatial = {i + 2: f"spatial_{i}" for i in range(len(patch_size))}
    example = torch.randn(1, input_channels, *patch_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # "instance_norm exported with train=True": right, it always uses input stats;
        warnings.simplefilter("ignore", UserWarning)  # the tracer's "converting a tensor to a Python boolean": the
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks of nnU-Net's norms, constant per model
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy (TorchScript) exporter, chosen: dynamo=False
        torch.onnx.export(network, (example,), buffer, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch", **spatial}, "logits": {0: "batch", **spatial}},
                          opset_version=17, dynamo=False)
    return buffer.getvalue()


def cpu_session(model: bytes | Path):
    """An ONNX Runtime CPU session of an ONNX file or in-memory model, with torch's thread count (so that the two
    runtimes compare on the same cores)."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # no spin-waiting between runs: ORT's idle threads would otherwise keep the cores busy after each patch,
    # slowing whatever runs next in the process (nnU-Net's own work, or a torch network the fast path times)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def run_session(session, x: torch.Tensor) -> torch.Tensor:
    """One batch through an ONNX Runtime session of nnkd's export (input "input"), logits back on x's device."""
    out = session.run(None, {"input": x.detach().float().cpu().contiguous().numpy()})[0]
    return torch.from_numpy(out).to(x.device)


def max_difference(network: nn.Module, session, input_channels: int, spatial_size) -> float:
    """max |ONNX Runtime − torch| on a random batch of two inputs of `spatial_size`."""
    check = torch.randn(2, input_channels, *spatial_size)
    with torch.no_grad():
        expected = network(check).numpy()
    got = session.run(None, {"input": check.numpy()})[0]
    return float(np.abs(got - expected).max())


def export_onnx(network: nn.Module, input_channels: int, patch_size, path: Path) -> float:
    """Write `path` with dynamic batch and spatial axes; return the max |ONNX − torch| on a random patch."""
    from nnkd.atomic import write_bytes_atomic

    write_bytes_atomic(path, onnx_bytes(network, input_channels, patch_size))
    return max_difference(network, cpu_session(path), input_channels, patch_size)


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
        _onnxruntime()
        try:
            self.session = cpu_session(path)
        except Exception as e:
            raise NnkdError(f"cannot load ONNX model {path}: {str(e).splitlines()[0][:160]}",
                            "export it again with nnkd_export --onnx") from e
        expected = self.session.get_inputs()[0].shape[1]
        if isinstance(expected, int) and expected != input_channels:
            raise NnkdError(f"{path} takes {expected} channel(s), the model's dataset has {input_channels}",
                            "use the ONNX file exported from this student")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_session(self.session, x)
