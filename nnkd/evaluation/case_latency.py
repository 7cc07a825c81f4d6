"""Per-case latency of one model in one runtime, timed as nnU-Net predicts a case from the NIfTI file to the written
label map (nnkd_predict --profile's five steps: read, preprocess, network, resample, write), and the figures of
several rounds pooled — what benchmarks/deploy_latency.py measures side by side for every model × runtime.

A model is a dict: `plans`, `dataset_json`, `network` (torch, eval mode), `channels`, `patch_size` and `onnx`
(runtime -> ONNX file, for "onnx" and "int8"). Runtimes: evaluation.runtimes.DEPLOY_RUNTIME_LABELS.
"""

import math
import statistics
import tempfile
from pathlib import Path

import torch

from nnkd.devices import resolve_device
from nnkd.inference.onnx_export import OnnxNetwork
from nnkd.inference.predict import make_predictor
from nnkd.inference.profile import STEPS, predict_profiled


def time_cases(model: dict, configuration: str, runtime: str, mirroring: bool, cases: list[Path],
               repeats: int = 1) -> dict:
    """nnU-Net's per-case prediction of `cases` (`*_0000.nii.gz` files), each step timed, `repeats` times over, after
    one warm-up patch; threads and memory as nnkd_predict sets them. The fast path is chosen once per call, as
    nnkd_predict chooses it (its record: `fast_path`)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    in_torch = runtime in ("torch", "bf16", "fast")
    network = model["network"] if in_torch else OnnxNetwork(model["onnx"][runtime], model["channels"])
    weights = [model["network"].state_dict()] if in_torch else [{}]
    fast = None
    if runtime == "fast":
        from nnkd.inference.fast import choose_for_plans

        fast = choose_for_plans(model["network"], weights, model["plans"], configuration, model["channels"])
        network = fast.network
    predictor = make_predictor(model["plans"], configuration, model["dataset_json"], weights, network, (0, 1, 2),
                               resolve_device("cpu"), use_mirroring=mirroring, bf16=runtime == "bf16")
    predictor.allow_tqdm = False
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=runtime == "bf16"):
        network(torch.zeros(1, model["channels"], *model["patch_size"]))  # warm-up: kernels, ONNX Runtime's arenas
    runs = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeats):
            record = predict_profiled(predictor, {c.name[: -len("_0000.nii.gz")]: [str(c)] for c in cases}, Path(out),
                                      False)
            runs.extend(record["cases"].values())
    shape = runs[0]["preprocessed_shape"]
    patches = math.prod(len(s) for s in compute_steps_for_sliding_window(shape, model["patch_size"], 0.5))
    return {"runs": [{"total": r["total"], "seconds": r["seconds"]} for r in runs], "patches": patches,
            "original_shape": runs[0]["original_shape"], "preprocessed_shape": shape,
            **({"fast_path": fast.record()} if fast else {})}


def pool_rounds(rounds: list[dict], mirroring: bool) -> dict:
    """One model × runtime's figures from its rounds (each a time_cases record): the median and min over every run
    of every round, each step's median, and the rounds' own medians."""
    runs = [r for one in rounds for r in one["runs"]]
    seconds = {step: statistics.median(r["seconds"][step] for r in runs) for step in STEPS}
    total = statistics.median(r["total"] for r in runs)
    last = rounds[-1]
    return {"seconds_per_case": round(total, 3), "seconds_per_case_min": round(min(r["total"] for r in runs), 3),
            "seconds_per_case_each_round": [round(statistics.median(r["total"] for r in one["runs"]), 3)
                                            for one in rounds],
            "steps": {k: round(v, 3) for k, v in seconds.items()},
            "network_share": round(seconds["network"] / total, 3), "patches": last["patches"],
            "network_seconds_per_patch": round(seconds["network"] / last["patches"] / (8 if mirroring else 1), 4),
            "original_shape": last["original_shape"], "preprocessed_shape": last["preprocessed_shape"],
            "runs": len(runs), "rounds": rounds,
            **({"fast_path": last["fast_path"], "fast_path_each_round": [one["fast_path"]["runtime"] for one in rounds]}
               if "fast_path" in last else {})}
