"""Size and CPU latency of the synthetic teacher vs its students, in torch and ONNX Runtime, side by side.

    python benchmarks/deploy_latency.py [--budgets tiny,small,medium] [--tta] [--out docs]

Builds nnU-Net's 3d_fullres teacher and the budget students from their plans (random weights: latency
does not depend on them), then times nnU-Net's whole per-case prediction (preprocessing, sliding window,
resampling back) on the synthetic test cases, one warm-up case first, in one process on one machine.
Writes docs/deploy_latency.{md,json,png}. Works in a temporary nnU-Net tree.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="tiny,small,medium")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (nnU-Net's default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.environ[name] = str(Path(tmp) / name)
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

        from nnkd.datasets.synthetic import SyntheticSpec, write_synthetic_dataset
        from nnkd.inference.onnx_export import OnnxNetwork, export_onnx
        from nnkd.inference.predict import make_predictor
        from nnkd.planners.budget import Budget
        from nnkd.planners.plan_and_preprocess import plan_and_preprocess
        from nnkd.plans import network_from_plans, num_input_channels

        raw = write_synthetic_dataset(SyntheticSpec(990), Path(os.environ["nnUNet_raw"]))
        folder = Path(os.environ["nnUNet_preprocessed"]) / raw.name
        models = [("teacher", "nnUNetPlans")]
        for budget in args.budgets.split(","):
            plan_and_preprocess(990, Budget(preset=budget), configurations=["3d_fullres"], num_processes=2,
                                preprocess=False)
            models.append((budget, f"nnKDPlans_{budget}"))
        dataset_json = json.loads((folder / "dataset.json").read_text())
        cases = sorted(raw.glob("imagesTs/*_0000.nii.gz"))
        images = [SimpleITKIO().read_images([str(c)]) for c in cases]

        rows, teacher_gflops = [], None
        progress = tqdm(total=len(models) * 2 * len(images), desc="cases predicted")
        for role, plans_name in models:
            plans = json.loads((folder / f"{plans_name}.json").read_text())
            torch.manual_seed(0)
            network = network_from_plans(plans, "3d_fullres", dataset_json).eval()
            weights = [network.state_dict()]
            channels = num_input_channels(plans, "3d_fullres", dataset_json)
            onnx_file = Path(tmp) / f"{role}.onnx"
            patch = plans["configurations"]["3d_fullres"]["patch_size"]
            export_onnx(network, channels, patch, onnx_file)
            params = sum(p.numel() for p in network.parameters())
            student = plans["configurations"]["3d_fullres"].get("nnkd_student", {})
            for runtime in ("torch", "onnxruntime"):
                net = network if runtime == "torch" else OnnxNetwork(onnx_file, channels)
                predictor = make_predictor(plans, "3d_fullres", dataset_json, weights if runtime == "torch" else [{}],
                                           net, (0, 1, 2), torch.device("cpu"), use_mirroring=args.tta)
                predictor.allow_tqdm = False
                seconds = []
                for i, (image, properties) in enumerate([images[0]] + images):  # first one warms up
                    start = time.perf_counter()
                    predictor.predict_single_npy_array(image, properties)
                    if i:
                        seconds.append(time.perf_counter() - start)
                        progress.update()
                rows.append({"model": role, "plans": plans_name, "runtime": runtime, "params": params,
                             "gflops_per_patch": student.get("gflops_per_patch"),
                             "seconds_per_case": statistics.median(seconds)})
            teacher_gflops = student.get("teacher_gflops_per_patch", teacher_gflops)
        progress.close()

    for r in rows:
        if r["model"] == "teacher":  # the teacher's count is recorded in every student plan
            r["gflops_per_patch"] = teacher_gflops
    teacher_time = {r["runtime"]: r["seconds_per_case"] for r in rows if r["model"] == "teacher"}
    teacher_params = next(r["params"] for r in rows if r["model"] == "teacher")
    lines = [f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}; mirroring TTA {'on' if args.tta else 'off'}; "
             f"median of {len(images)} synthetic test cases after one warm-up.", "",
             "| model | parameters | × smaller | GFLOPs / patch | runtime | s / case | × faster than teacher "
             "(same runtime) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {teacher_params / r['params']:.1f} | "
                     f"{r['gflops_per_patch']:.1f} | {r['runtime']} | "
                     f"{r['seconds_per_case']:.2f} | {teacher_time[r['runtime']] / r['seconds_per_case']:.1f} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy_latency.md").write_text(table + "\n")
    (args.out / "deploy_latency.json").write_text(json.dumps({"tta": args.tta, "rows": rows}, indent=2) + "\n")

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for runtime, marker in (("torch", "o"), ("onnxruntime", "s")):
        sel = sorted((r for r in rows if r["runtime"] == runtime), key=lambda r: r["params"])
        ax.plot([r["params"] / 1e6 for r in sel], [r["seconds_per_case"] for r in sel], marker=marker, label=runtime)
        for r in sel if runtime == "torch" else []:
            ax.annotate(r["model"], (r["params"] / 1e6, r["seconds_per_case"]), textcoords="offset points",
                        xytext=(6, -12), fontsize=9)
    ax.set(xscale="log", yscale="log", xlabel="parameters (M)", ylabel="CPU seconds per case",
           title="nnU-Net prediction per case: teacher vs students")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "deploy_latency.png", dpi=100)
    print(f"wrote {args.out / 'deploy_latency.md'}, .json, .png")


if __name__ == "__main__":
    main()
