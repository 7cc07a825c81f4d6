"""The ways one network of nnU-Net's can run, for whoever times or runs it: nnkd_predict's fast path
(inference.fast), the latency planner (`--max-latency`, planners.latency) and the benchmarks.

    torch                  the stock network, as nnU-Net's predictor runs it
    torch oneDNN           the same modules and weights, every convolution through oneDNN (torch sends a
                           convolution with few input channels on a map of < 20,480 rows, such as a 3D network's
                           first one, to its native kernel: 17.2 ms against oneDNN's 12.9 there, docs/deploy.md)
    torch channels-last    as torch oneDNN, with channels-last maps (channels_last / channels_last_3d)
    onnxruntime            the network converted in memory (ONNX opset 17) to an ONNX Runtime session

Converting changes how the same weights are computed, never what: `runnable_candidates` keeps only the
conversions that run and equal the stock network's logits within TOLERANCE, for nnkd_predict and the planner alike.
"""

import copy
import importlib.util
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nnkd.errors import NnkdError

TORCH, ONEDNN, CHANNELS_LAST, ONNXRUNTIME = "torch", "torch oneDNN", "torch channels-last", "onnxruntime"
CANDIDATES = (TORCH, ONEDNN, CHANNELS_LAST, ONNXRUNTIME)
# max |candidate − stock torch| of the logits on a random input that a candidate may show (fp32 sums in another
# order give ~1e-5 on nnU-Net's networks); above it the candidate is not used
TOLERANCE = 1e-3


def has_onnxruntime() -> bool:
    """Whether onnxruntime is installed (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def onnxruntime_module():
    """onnxruntime, or one clear line saying how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise NnkdError("onnxruntime is not installed", 'pip install "nnkd[onnx]"') from e
    return onnxruntime


def onnx_bytes(network: nn.Module, input_channels: int, patch_size) -> bytes:
    """The network as an ONNX model (opset 17) with dynamic batch and spatial axes, in memory."""
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


def ort_session(model: bytes | Path, device: str = "cpu"):
    """An ONNX Runtime session of an ONNX file or in-memory model. On the CPU it uses torch's thread count (so
    that the two runtimes compare on the same cores); on "cuda" the CUDA execution provider."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if device != "cuda":
        options.intra_op_num_threads = torch.get_num_threads()
        # no spin-waiting between runs: ORT's idle threads would otherwise keep the cores busy after each patch,
        # slowing whatever runs next in the process (nnU-Net's own work, or a torch network timed next)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers)


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


class SessionNetwork(nn.Module):
    """An ONNX Runtime session behind an nn.Module call (one set of weights)."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_session(self.session, x)


class _OneDnnConv:
    """A convolution that always runs oneDNN's kernel (aten.mkldnn_convolution, the one torch itself picks for all
    but small few-channel inputs); same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                                 self.groups)


class _OneDnnConv2d(_OneDnnConv, nn.Conv2d):
    pass


class _OneDnnConv3d(_OneDnnConv, nn.Conv3d):
    pass


def route_to_onednn(network: nn.Module) -> nn.Module:
    """Every plain zero-padded float convolution of `network` (in place) runs oneDNN's kernel."""
    for module in network.modules():
        if type(module) in (nn.Conv2d, nn.Conv3d) and module.padding_mode == "zeros" \
                and isinstance(module.padding, tuple):
            module.__class__ = _OneDnnConv3d if type(module) is nn.Conv3d else _OneDnnConv2d
    return network


class ChannelsLastNetwork(nn.Module):
    """The stock network with its weights in channels-last layout; inputs are converted on the way in and the
    logits back to nnU-Net's contiguous layout. Its state dict is the stock one (load_state_dict copies into the
    channels-last parameters, keeping their layout)."""

    def __init__(self, network: nn.Module, dims: int):
        super().__init__()
        self.layout = torch.channels_last_3d if dims == 3 else torch.channels_last
        self.network = network.to(memory_format=self.layout)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.contiguous(memory_format=self.layout)).contiguous()


def torch_candidate(network: nn.Module, name: str, dims: int) -> nn.Module:
    """`network` itself (TORCH) or a converted copy of it (ONEDNN, CHANNELS_LAST) with the same weights."""
    if name == TORCH:
        return network
    routed = route_to_onednn(copy.deepcopy(network))
    if name == ONEDNN:
        return routed
    if name == CHANNELS_LAST:
        return ChannelsLastNetwork(routed, dims)
    raise ValueError(f"{name} is not a torch candidate")


def candidate(network: nn.Module, name: str, input_channels: int, patch_size) -> nn.Module:
    """`network` (eval mode, on the CPU) run the way `name` (one of CANDIDATES) runs it, with its current weights."""
    if name == ONNXRUNTIME:
        return SessionNetwork(ort_session(onnx_bytes(network, input_channels, patch_size)))
    return torch_candidate(network, name, len(patch_size))


def runnable_candidates(network: nn.Module, input_channels: int, patch_size, spatial_check, candidates=CANDIDATES,
                        build=None) -> tuple[dict, dict, dict]:
    """The candidates that convert and equal the stock `network`'s logits (eval mode, on the CPU, its weights
    loaded) within TOLERANCE on a random input of `spatial_check` (a small size the network takes):
    ({name: runner}, {name: max difference}, {name: why it was left out}). TORCH is `network` itself. `build(name)`
    makes a runner (default: `candidate`, with the network's current weights)."""
    build = build or (lambda name: candidate(network, name, input_channels, patch_size))
    check = torch.randn(1, input_channels, *spatial_check)
    with torch.inference_mode():
        expected = network(check)  # once, for every candidate
    built, differences, left_out = {}, {}, {}
    for name in candidates:
        if name == TORCH:
            built[name] = network
            continue
        if name == ONNXRUNTIME and not has_onnxruntime():
            left_out[name] = 'onnxruntime is not installed (pip install "nnkd[onnx]")'
            continue
        try:
            runner = build(name)
            with torch.inference_mode():
                difference = float((runner(check) - expected).abs().max())
        except Exception as e:  # an exporter or runtime error: the others still run
            left_out[name] = f"its conversion failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
            continue
        if not difference <= TOLERANCE:
            left_out[name] = f"it differs from the stock network by {difference:.2g} (more than {TOLERANCE:g})"
            continue
        built[name], differences[name] = runner, difference
    return built, differences, left_out
