"""Where a network's per-patch time goes on this CPU: one patch through each plans' network alone (no
sliding window, no nnU-Net per-case work), eager, channels-last and torch.compile, and the share of each op type.

    python benchmarks/network_step.py -d DATASET [-p nnUNetPlans,nnKDPlans_tiny] [-c 3d_fullres] [--repeats 3]
        [--no-compile] [-o OUT.json]

Each plans is read from $nnUNet_preprocessed/<dataset> by nnkd's plans loader (a missing plans or configuration
stops the script with its one error line before anything is measured); the patch is that configuration's size,
batch 1, random input and nnU-Net's initialisation (time does not depend on the weights). Times are the median of
--repeats runs after one warm-up, with torch's threads as set (torch.set_num_threads via OMP_NUM_THREADS). The
profile is one eager pass under torch.profiler, grouped by op (self CPU time). Prints a markdown table; -o also
writes the numbers as JSON. The first plans is the reference of the "× faster" column (the teacher).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def median_seconds(network, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        network(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            network(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def op_shares(network, x: torch.Tensor, top: int = 6) -> dict[str, float]:
    """Share of the pass's self CPU time per op name, the largest `top`."""
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        network(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {e.key: e.self_cpu_time_total / total for e in ranked}


def measure(config, repeats: int, compile_too: bool) -> dict:
    """Times and op shares of one PreprocessedConfiguration's network."""
    from nnkd.plans import network_from_plans, num_input_channels
    from nnkd.planners.network_cost import count_gflops, count_params

    plans, configuration, dataset_json = config.plans, config.configuration, config.dataset_json
    patch = plans["configurations"][configuration]["patch_size"]
    network = network_from_plans(plans, configuration, dataset_json).eval()
    x = torch.randn(1, num_input_channels(plans, configuration, dataset_json), *patch)
    row = {"plans": config.plans_name, "patch_size": patch, "params": count_params(network),
           "gflops_per_patch": count_gflops(network, x.shape[1], patch), "eager_s": median_seconds(network, x, repeats),
           "ops": op_shares(network, x)}
    memory_format = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
    row["channels_last_s"] = median_seconds(network.to(memory_format=memory_format),
                                            x.contiguous(memory_format=memory_format), repeats)
    if compile_too:
        fresh = network_from_plans(plans, configuration, dataset_json).eval()
        compiled = torch.compile(fresh)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(x)
        row["compile_first_call_s"] = time.perf_counter() - start
        row["compiled_s"] = median_seconds(compiled, x, repeats)
    return row


def markdown(rows: list[dict]) -> str:
    reference = rows[0]["eager_s"]
    lines = ["| plans | params | GFLOPs / patch | eager s / patch | × faster (eager) | channels-last s | compiled s | "
             "largest ops (self CPU) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ops = ", ".join(f"{k.removeprefix('aten::')} {100 * v:.0f} %" for k, v in list(r["ops"].items())[:4])
        compiled = f"{r['compiled_s']:.3f}" if "compiled_s" in r else "–"
        lines.append(f"| {r['plans']} | {r['params'] / 1e6:.2f} M | {r['gflops_per_patch']:.1f} | {r['eager_s']:.3f} | "
                     f"{reference / r['eager_s']:.1f} | {r['channels_last_s']:.3f} | {compiled} | {ops} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-d", required=True, help="dataset ID or name, in $nnUNet_preprocessed")
    parser.add_argument("-p", default="nnUNetPlans,nnKDPlans_tiny", help="plans names, the teacher first")
    parser.add_argument("-c", default="3d_fullres", help="configuration")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its first call compiles)")
    parser.add_argument("-o", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    from nnkd.errors import NnkdError
    from nnkd.plans import PreprocessedConfiguration

    try:
        configs = [PreprocessedConfiguration.load(args.d, name, args.c) for name in args.p.split(",")]
    except NnkdError as error:
        parser.error(str(error))
    rows = [measure(config, args.repeats, not args.no_compile) for config in configs]
    text = markdown(rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, configuration {args.c}\n\n{text}")
    if args.o:
        args.o.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                      "configuration": args.c, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
