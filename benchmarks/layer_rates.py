"""Per-layer time and FLOP rate of a teacher and its students, in torch and ONNX Runtime (issue 46, item 1).

    python benchmarks/layer_rates.py --preprocessed $nnUNet_preprocessed/Dataset980_MultiOrgan2D -c 2d \
        --plans nnUNetPlans,nnKDPlans_params5157263,nnKDPlans_params80582 [--runtimes torch,onnx] [--repeats 5] \
        [--threads N] -o docs/benchmarks/layer_rates_<task>

Each plans' stock network (random weights, seed 0: the time does not depend on them) runs one patch of its plans'
patch size, batch 1, no gradients, after a warm-up pass; every layer is timed (torch: hooks around each leaf module;
ONNX Runtime: its per-node profile) and its FLOPs counted from its shapes (nnkd.evaluation.layer_rates). A layer's
rate is set against a large reference convolution timed in the same runtime. Writes OUT/results.json and
OUT/report.md. Keep the machine quiet while it runs.
"""

import argparse
import json
import platform
from pathlib import Path

import torch

from nnkd.atomic import write_bytes_atomic, write_json_atomic
from nnkd.devices import cpu_identity, keep_freed_memory
from nnkd.evaluation.layer_rates import format_rates, network_rates, reference_rate
from nnkd.plans import network_from_plans, num_input_channels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preprocessed", type=Path, required=True, help="a preprocessed dataset folder (plans JSONs)")
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("--plans", required=True, help="comma-separated plans names, the teacher's first")
    parser.add_argument("--runtimes", default="torch,onnx")
    parser.add_argument("--repeats", type=int, default=5, help="passes per measurement (their median)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every network side by side (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: theirs)")
    parser.add_argument("--top", type=int, default=10, help="layer groups per table in the report")
    parser.add_argument("-o", type=Path, required=True)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # nnkd_predict's memory setting (results before 2026-12-07 ran without it)
    dataset_json = json.loads((args.preprocessed / "dataset.json").read_text())
    runtimes = tuple(r for r in args.runtimes.split(",") if r)
    record = {"dataset": args.preprocessed.name, "configuration": args.configuration, "repeats": args.repeats,
              "machine": {**cpu_identity(), "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
                          "threads_asked": args.threads, "keep_freed_memory": kept},
              "versions": {"torch": torch.__version__}, "models": {}}
    if "onnx" in runtimes:
        import onnxruntime

        record["versions"]["onnxruntime"] = onnxruntime.__version__
    report = [f"# Per-layer time and FLOP rate: {args.preprocessed.name}, {args.configuration}", "",
              f"Machine: {record['machine'].get('cpu') or platform.machine()}, {torch.get_num_threads()} torch "
              f"threads; one patch, batch 1, median of {args.repeats} passes after a warm-up, {args.rounds} rounds of every "
              "network side by side (the table is each network's median round); random weights. "
              "FLOPs: 2 per multiply-add of the convolutions; norms, activations and copies count none. "
              "'of reference': the layer's rate over a large convolution's in the same runtime "
              "(nnkd/evaluation/layer_rates.py).", ""]
    names = [p for p in args.plans.split(",") if p]
    networks = {}
    for name in names:
        plans = json.loads((args.preprocessed / f"{name}.json").read_text())
        torch.manual_seed(0)
        networks[name] = (network_from_plans(plans, args.configuration, dataset_json),
                          num_input_channels(plans, args.configuration, dataset_json),
                          plans["configurations"][args.configuration]["patch_size"])
    dims = len(networks[names[0]][2])
    record["rounds"] = []
    for _ in range(args.rounds):  # every network in each round, side by side; the reference once per round
        references = {r: reference_rate(dims, r, args.repeats, args.threads) for r in runtimes}
        record["rounds"].append({"reference_gflop_per_s": references, "models": {
            name: network_rates(network, channels, patch, runtimes, args.repeats, args.threads, references)
            for name, (network, channels, patch) in networks.items()}})
    for name, (network, channels, patch) in networks.items():
        seconds = {r: [rnd["models"][name][r]["seconds"] for rnd in record["rounds"]] for r in runtimes}
        median = {r: sorted(range(args.rounds), key=lambda i: seconds[r][i])[args.rounds // 2] for r in runtimes}
        rates = {r: record["rounds"][median[r]]["models"][name][r] for r in runtimes}  # the median round's table
        record["models"][name] = {"parameters": sum(p.numel() for p in network.parameters()), "patch_size": patch,
                                  "seconds_per_patch_rounds": seconds, **rates}
        for runtime in runtimes:
            spread = ", ".join(f"{1e3 * t:.1f}" for t in seconds[runtime])
            report += [format_rates(f"{name} ({record['models'][name]['parameters'] / 1e6:.3f} M params, patch "
                                    f"{'×'.join(map(str, patch))}; ms per patch in the {args.rounds} rounds: {spread})",
                                    runtime, rates[runtime], args.top), ""]
        print(f"{name}: " + ", ".join(f"{r} {rates[r]['seconds'] * 1e3:.1f} ms, "
                                      f"{100 * rates[r]['of_reference']:.0f} % of reference" for r in runtimes))
    del record["rounds"]  # their totals are kept per model; the full per-layer records only for the median round
    args.o.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.o / "results.json", record)
    write_bytes_atomic(args.o / "report.md", ("\n".join(report) + "\n").encode())
    print(f"written: {args.o / 'report.md'}")


if __name__ == "__main__":
    main()
