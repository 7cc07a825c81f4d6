"""Seconds per patch of each fast-path candidate (nnkd.inference.fast), side by side in rounds, for plans' networks.

    python benchmarks/fast_candidates.py PREPROCESSED_DATASET:PLANS:CONFIGURATION [...] [--rounds 5] -o OUT

Each network (random weights, seed 0: time does not depend on them) is built as nnkd_predict builds it, with
nnkd's memory setting; its candidates are those nnkd_predict would choose from (build_candidates: converted and
checked against the stock network), each run on one patch of the plans' patch size, batch 1, after a warm-up
pass; a round runs every candidate once, and --rounds rounds give each candidate's min and median. Writes
OUT/results.json and OUT/report.md. Keep the machine quiet while it runs.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnkd.atomic import write_json_atomic
from nnkd.devices import cpu_identity, keep_freed_memory
from nnkd.inference.fast import build_candidates, check_size
from nnkd.network_runtimes import CANDIDATES
from nnkd.plans import network_from_plans, num_input_channels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="+", help="PREPROCESSED_DATASET_FOLDER:PLANS_NAME:CONFIGURATION")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-o", type=Path, required=True)
    args = parser.parse_args()
    record = {"machine": {**cpu_identity(), "torch_threads": torch.get_num_threads(),
                          "keep_freed_memory": keep_freed_memory()},
              "torch": torch.__version__, "rounds": args.rounds, "networks": []}
    lines = [f"# Fast-path candidates, seconds per patch (min / median of {args.rounds} rounds)", "",
             f"{record['machine'].get('cpu')}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             "random weights; `benchmarks/fast_candidates.py`.", "",
             "| network | patch | " + " | ".join(CANDIDATES) + " |", "|---|---|" + "---|" * len(CANDIDATES)]
    for spec in args.networks:
        folder, plans_name, configuration = spec.split(":")
        plans = json.loads((Path(folder) / f"{plans_name}.json").read_text())
        dataset_json = json.loads((Path(folder) / "dataset.json").read_text())
        torch.manual_seed(0)
        network = network_from_plans(plans, configuration, dataset_json).eval()
        channels = num_input_channels(plans, configuration, dataset_json)
        patch_size = PlansManager(plans).get_configuration(configuration).patch_size
        built, differences, left_out = build_candidates(network, [network.state_dict()], channels, patch_size,
                                                        check_size(plans, configuration))
        patch = torch.randn(1, channels, *patch_size)
        seconds = {name: [] for name in built}
        with torch.inference_mode():
            for candidate in built.values():
                candidate(patch)  # warm-up
            for _ in range(args.rounds):
                for name, candidate in built.items():
                    start = time.perf_counter()
                    candidate(patch)
                    seconds[name].append(time.perf_counter() - start)
        summary = {name: {"min": round(min(v), 4), "median": round(statistics.median(v), 4)}
                   for name, v in seconds.items()}
        record["networks"].append({"dataset": Path(folder).name, "plans": plans_name, "configuration": configuration,
                                   "patch_size": list(patch_size), "seconds": summary, "max_difference": differences,
                                   "left_out": left_out})
        cells = [f"{summary[n]['min']:.4g} / {summary[n]['median']:.4g}" if n in summary else left_out.get(n, "–")
                 for n in CANDIDATES]
        lines.append(f"| {Path(folder).name} {plans_name} {configuration} | {'×'.join(map(str, patch_size))} | "
                     + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    args.o.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.o / "results.json", record)
    (args.o / "report.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.o / 'results.json'}, report.md")


if __name__ == "__main__":
    main()
