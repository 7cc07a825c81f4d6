"""nnkd_predict's fast path on the CPU: the stock student run the fastest way this CPU offers (issue 46 item 2).

Which way is fastest depends on the network and the CPU (docs/deploy.md, measured side by side by
benchmarks/fast_candidates.py): on a Zen 5 the four ways of nnkd.network_runtimes (torch, torch oneDNN, torch
channels-last, ONNX Runtime) were within ~10 % of each other for 3D networks, and ONNX Runtime was 1.4–1.8× faster
than torch for 2D ones; on a Zen 4 ONNX Runtime ran the 3D teacher slower than torch and the tiny student 1.3×
faster. So the predictor is built the way cuDNN's benchmark mode picks a kernel: each candidate runs one patch of
the plans' size, and the fastest is used. ONNX Runtime gets one session per fold (nnU-Net's predictor loads each
fold's weights into the one network it runs).

Nothing is written: the model folder stays stock. Every conversion is checked against the stock network on a
random input before it may be chosen; one that differs beyond network_runtimes.TOLERANCE (or fails) is left out,
with its reason.
"""

import time

import torch
from torch import nn

from nnkd.network_runtimes import CANDIDATES, ONNXRUNTIME, onnx_bytes, ort_session, run_session, \
    runnable_candidates, torch_candidate


class OrtNetwork(nn.Module):
    """One ONNX Runtime session per fold behind the nn.Module calls nnU-Net's predictor makes: it calls
    load_state_dict(fold's weights) before each fold and then the network on each patch; this picks that fold's
    session (the same state dict object, or equal weights)."""

    def __init__(self, sessions: list[tuple[dict, object]]):
        super().__init__()
        self.sessions = sessions
        self.session = sessions[0][1]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        for weights, session in self.sessions:
            if weights is state_dict or _same_weights(weights, state_dict):
                self.session = session
                return None
        raise KeyError("these weights are none of the folds this network was converted from")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_session(self.session, x)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class FastPath:
    """The chosen network and what choosing it measured: seconds per patch of each candidate, their max
    difference from the stock network, what was left out and why, and the seconds the choice took."""

    def __init__(self, network: nn.Module, runtime: str, seconds: dict, differences: dict, left_out: dict,
                 choice_seconds: float):
        self.network, self.runtime, self.seconds = network, runtime, seconds
        self.differences, self.left_out, self.choice_seconds = differences, left_out, choice_seconds

    def summary(self) -> str:
        timings = ", ".join(f"{name} {s:.3g}" for name, s in sorted(self.seconds.items(), key=lambda kv: kv[1]))
        skipped = "".join(f"; {name} left out: {why}" for name, why in self.left_out.items())
        return (f"Fast path: {self.runtime} (seconds per patch: {timings}; chosen in {self.choice_seconds:.1f} s"
                f"{skipped}; --stock turns it off)")

    def record(self) -> dict:
        return {"runtime": self.runtime, "seconds_per_patch": self.seconds, "max_difference": self.differences,
                "left_out": self.left_out, "choice_seconds": self.choice_seconds}


def _seconds_per_patch(network, x: torch.Tensor, passes: int = 1) -> float:
    with torch.inference_mode():
        network(x)  # warm-up: allocations, kernel choice, ONNX Runtime's first-run work
        times = []
        for _ in range(passes):
            start = time.perf_counter()
            network(x)
            times.append(time.perf_counter() - start)
    return min(times)


def _onnxruntime_candidate(network: nn.Module, folds: list[dict], input_channels: int, patch_size) -> OrtNetwork:
    sessions = []
    for weights in folds:
        network.load_state_dict(weights)
        sessions.append((weights, ort_session(onnx_bytes(network, input_channels, patch_size))))
    network.load_state_dict(folds[0])
    return OrtNetwork(sessions)


def build_candidates(network: nn.Module, folds: list[dict], input_channels: int, patch_size, spatial_check,
                     candidates=CANDIDATES) -> tuple[dict, dict, dict]:
    """network_runtimes.runnable_candidates, with ONNX Runtime holding one session per fold's weights.
    `network`: the stock network with folds[0] loaded (torch candidates reuse copies of it)."""
    def build(name):
        if name == ONNXRUNTIME:
            return _onnxruntime_candidate(network, folds, input_channels, patch_size)
        return torch_candidate(network, name, len(patch_size))

    return runnable_candidates(network, input_channels, patch_size, spatial_check, candidates, build)


def choose(network: nn.Module, folds: list[dict], input_channels: int, patch_size, spatial_check,
           candidates=CANDIDATES) -> FastPath:
    """The fastest of build_candidates() on one patch of `patch_size` (batch 1, as nnU-Net's sliding window calls
    it). `network`: the stock network (its modules are reused by torch candidates)."""
    start = time.perf_counter()
    network = network.eval().cpu()
    network.load_state_dict(folds[0])
    built, differences, left_out = build_candidates(network, folds, input_channels, patch_size, spatial_check,
                                                    candidates)
    patch = torch.randn(1, input_channels, *patch_size)
    seconds = {name: _seconds_per_patch(candidate, patch) for name, candidate in built.items()}
    runtime = min(seconds, key=seconds.get)
    return FastPath(built[runtime], runtime, seconds, differences, left_out, time.perf_counter() - start)


def check_size(plans: dict, configuration: str) -> list[int]:
    """A small input the configuration's network takes: twice its pooling product per axis, at most the patch."""
    import numpy as np
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration(configuration)
    divisible = np.prod(np.array(cm.pool_op_kernel_sizes), axis=0)
    return [int(min(p, 2 * d)) for p, d in zip(cm.patch_size, divisible)]


def choose_for_plans(network: nn.Module, folds: list[dict], plans: dict, configuration: str,
                     input_channels: int) -> FastPath:
    """choose() at the configuration's patch size, checked at check_size()."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    patch_size = PlansManager(plans).get_configuration(configuration).patch_size
    return choose(network, folds, input_channels, patch_size, check_size(plans, configuration))
