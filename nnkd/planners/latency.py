"""`--max-latency`: plan the largest student whose forward pass of one patch fits a time budget, measured on the
planning machine.

A latency is measured, never estimated: the candidate network is built as nnU-Net builds it, put in eval mode on
the chosen device and runtime (torch, or ONNX Runtime on an exported copy), run on one patch of the configuration
(batch 1, no deep supervision) twice to warm up, then `REPEATS` times; the median is its latency. Results are
cached per architecture and machine in the dataset's preprocessed folder (`nnkd_latency.json`), so replanning
measures nothing twice.

The search: the parameter/GFLOPs search (architecture_search) already gives, for any GFLOPs limit, the largest
student under it. Latency grows with GFLOPs along that family, so the GFLOPs limit is bisected — each step plans
the largest student under the limit and measures it — and the largest measured student within the budget wins.
That family is coarse (its base width moves 2 channels at a time, and a lower limit may change the student's shape),
so the winner is then widened, keeping its shape: for every k, its stages after the first k grow one base width at
a time (the first k keep their widths), a bisection on measured latency finds the widest of that family within the
budget, and the one with the most parameters of all families becomes the plan; this repeats from the new plan
until no family has a wider member within the budget. Keeping the full-resolution stages lets the cheap deep ones
grow alone, in the steps of 8 channels the widths are rounded to (architecture_search; docs/planning.md).
Last, the winner is measured again (`fit_latency`'s confirmation), and replaced by the next largest candidate that
fitted if it no longer fits.
"""

import hashlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

from nnkd.atomic import write_json_atomic
from nnkd.devices import cpu_count, cpu_identity, keep_freed_memory
from nnkd.errors import NnkdError
from nnkd.planners.budget import check_latency_runtime

REPEATS = 7
WARMUP = 2
BISECTION_STEPS = 8
CACHE_FILE = "nnkd_latency.json"


def machine() -> dict:
    """What a latency depends on besides the network: recorded with it, part of the cache key. Measuring runs
    with nnkd's CPU memory setting, as nnkd_predict does (`keep_freed_memory`, switched on here)."""
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or None, **cpu_identity(),
            "cpus": cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "keep_freed_memory": keep_freed_memory(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def measure_patch_latency(architecture: dict, input_channels: int, num_classes: int, patch_size, device: str,
                          runtime: str) -> float:
    """Median milliseconds of one patch through the network (after WARMUP runs, REPEATS timed) in `runtime`:
    torch, ONNX Runtime ("onnx"), or "fast": as nnkd_predict runs it on the CPU, the fastest of the candidates
    that convert and match the stock network (network_runtimes.runnable_candidates), each timed the same way."""
    import torch

    from nnkd.network_runtimes import onnx_bytes, ort_session, run_session, runnable_candidates
    from nnkd.planners.network_cost import build_network

    keep_freed_memory()  # as nnkd_predict runs it
    check_latency_runtime(device, runtime)
    if device == "cuda" and not torch.cuda.is_available():
        raise NnkdError("--latency-device cuda was asked for but no CUDA GPU is visible",
                        "plan on the machine the student will run on, or use --latency-device cpu")
    network = build_network(architecture, input_channels, num_classes, device="cpu").eval()
    patch = torch.randn(1, input_channels, *patch_size)
    if runtime == "onnx":
        session = ort_session(onnx_bytes(network, input_channels, patch_size), device)
        return _median_ms(lambda: run_session(session, patch))
    if runtime == "fast":  # as nnkd_predict: the runners that convert and match the stock network, fastest
        runners = runnable_candidates(network, input_channels, patch_size, patch_size)[0]
        return min(_median_ms(lambda: runner(patch)) for runner in runners.values())  # noqa: B023 (called at once)
    network, patch = network.to(device), patch.to(device)
    return _median_ms(lambda: network(patch), cuda=device == "cuda")


def _median_ms(run: Callable, cuda: bool = False) -> float:
    """Median milliseconds of `run()` over REPEATS calls after WARMUP, under inference mode."""
    import torch

    times = []
    with torch.inference_mode():
        for i in range(WARMUP + REPEATS):
            start = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize()
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


class LatencyCache:
    """Measured latencies by architecture, patch, device, runtime and machine, in the preprocessed folder."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / CACHE_FILE
        try:
            self.entries = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except ValueError:
            self.entries = {}  # a damaged cache only costs measuring again

    @staticmethod
    def key(architecture: dict, input_channels: int, num_classes: int, patch_size, device: str, runtime: str) -> str:
        text = json.dumps([architecture, input_channels, num_classes, list(patch_size), device, runtime, machine()],
                          sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()

    def latency(self, measure: Callable, architecture: dict, input_channels: int, num_classes: int, patch_size,
                device: str, runtime: str) -> float:
        key = self.key(architecture, input_channels, num_classes, patch_size, device, runtime)
        if key not in self.entries:
            self.entries[key] = round(measure(architecture, input_channels, num_classes, patch_size, device, runtime),
                                      4)
            write_json_atomic(self.path, self.entries)
        return self.entries[key]


def fit_latency(search, param_limit: float, gflop_limit: float, budget, cache: LatencyCache,
                measure: Callable = None) -> tuple:
    """(student architecture, its latency in ms measured again, measurements of the search, confirmations) of the
    largest student of `search` within the parameter and GFLOPs limits whose patch latency is at most
    `budget.max_latency_ms`, in the search's measurement and in a fresh one.

    The confirmation: the search keeps the largest of many candidates that measured within the budget, which
    favours one whose measurement came out low (on a CPU one measurement varies by a few per cent). So the winner
    is measured once more, outside the cache; over the budget, the next largest candidate that fitted is measured
    again, and so on. The plan records the fresh measurement."""
    measure = measure or measure_patch_latency
    target = budget.max_latency_ms
    fits, tried = {}, []  # every candidate measured within the budget, by architecture; every (GFLOPs, ms)

    def timed(student) -> float:
        ms = cache.latency(measure, student.architecture, search.input_channels, search.num_classes,
                           search.patch_size, budget.latency_device, budget.latency_runtime)
        tried.append((student.cost.gflops, ms))
        if ms <= target:
            fits[json.dumps(student.architecture, sort_keys=True)] = (student, ms)
        return ms

    best = _bisect_gflops(search, param_limit, gflop_limit, target, timed)
    if best is None:
        fastest = min(ms for _, ms in tried) if tried else None
        raise NnkdError(f"no student architecture runs a patch within {target:g} ms on this machine "
                        f"({budget.latency_device}, {budget.latency_runtime})"
                        + (f"; the fastest measured takes {fastest:.1f} ms" if fastest is not None else ""),
                        "raise --max-latency, or plan on the machine (--latency-device) the student will run on")
    best = _widen(search, best, param_limit, gflop_limit, target, timed)
    fits.pop(json.dumps(best[0].architecture, sort_keys=True))
    others = sorted(fits.values(), key=lambda f: (f[0].cost.params, f[0].cost.gflops), reverse=True)
    student, again, confirmations = _confirm(search, [best, *others], budget, measure)
    return student, again, tried, confirmations


def _bisect_gflops(search, param_limit: float, gflop_limit: float, target: float, timed: Callable):
    """(student, ms) of the largest student within `target` ms found by bisecting the GFLOPs limit, or None."""
    hi = min(gflop_limit, search.teacher_cost().gflops)
    lo, best = 0.0, None
    limit = hi
    for _ in range(BISECTION_STEPS):
        try:
            student = search.search(param_limit, limit)
        except NnkdError:  # nothing is that small: the limit must rise
            lo = limit
        else:
            ms = timed(student)
            if ms <= target:
                if best is None or student.cost.gflops > best[0].cost.gflops:
                    best = (student, ms)
                if limit >= hi:
                    break  # the largest allowed student already fits
                lo = student.cost.gflops
            else:
                hi = student.cost.gflops * 0.999
        if hi <= lo * 1.02:
            break
        limit = (lo + hi) / 2 if lo else hi / 4
    return best


def _widen(search, best: tuple, param_limit: float, gflop_limit: float, target: float, timed: Callable) -> tuple:
    """Finer steps: the winner made wider, keeping its first k stages, for every k, until no family of the plan has a
    wider member within `target` ms; (student, ms)."""
    while True:
        improved = False
        for kept in range(len(search.teacher_widths) - 1):
            wider = search.widened(best[0], param_limit, gflop_limit, kept)
            lo, hi = 0, len(wider) - 1
            while lo <= hi:  # latency grows with width along one such family
                mid = (lo + hi) // 2
                ms = timed(wider[mid])
                if ms <= target:
                    lo = mid + 1
                    if (wider[mid].cost.params, wider[mid].cost.gflops) > (best[0].cost.params, best[0].cost.gflops):
                        best, improved = (wider[mid], ms), True
                else:
                    hi = mid - 1
        if not improved:
            return best


def _confirm(search, candidates: list[tuple], budget, measure: Callable) -> tuple:
    """The first of `candidates` ((student, search ms), largest first) that a fresh measurement keeps within the
    budget: (student, ms, confirmations); none: one clear error."""
    target, confirmations = budget.max_latency_ms, []
    for student, ms in candidates:
        again = round(measure(student.architecture, search.input_channels, search.num_classes, search.patch_size,
                              budget.latency_device, budget.latency_runtime), 4)
        confirmations.append({"params": student.cost.params, "gflops": round(student.cost.gflops, 3),
                              "search_ms": ms, "again_ms": again})
        if again <= target:
            return student, again, confirmations
    raise NnkdError(f"no student architecture runs a patch within {target:g} ms on this machine "
                    f"({budget.latency_device}, {budget.latency_runtime}) when measured again: "
                    f"{len(confirmations)} candidate(s) that fitted once took "
                    f"{min(c['again_ms'] for c in confirmations):.1f} ms or more the second time",
                    "raise --max-latency, or plan on a quiet machine (nothing else running)")
