"""Per-case CPU latency of nnU-Net's default teacher vs nnkd students, torch fp32 / ONNX Runtime fp32 / int8.

    python benchmarks/deploy_latency.py --case ct|colin27|synthetic [--work DIR] [--budgets tiny,small]
        [--latency-student MS] [--models M,...] [--runtimes torch,onnx,int8[,bf16]] [--mirroring off,on]
        [--repeats N] [--rounds N] [--remeasure N] [--prepare-only] [--out DIR]

Cases (one process, one machine, side by side):
  ct        a CT-like case of --shape voxels (default 150×300×300, Z Y X): nnkd's synthetic generator with that
            base shape, its test case centre-cropped to exactly --shape; the dataset's other cases plan the models.
  colin27   Colin27 at 1 mm, whole head (181×217×181): `ch2.nii.gz` from Debian's mricron-data (downloaded once by
            benchmarks/colin27_dataset.py's code), planned on itself and its left-right mirror image.
  synthetic the default synthetic dataset's 32×48×48 test cases (one patch each).

Models: nnU-Net's default 3d_fullres plan (the teacher) and the students of --budgets, plus with
--latency-student MS the student `nnkd_plan_and_preprocess --max-latency MS` plans on this machine. The networks
get random weights (seed 0): the time does not depend on them, and the same weights run in every runtime. int8 is
nnkd_export's quantization (nnkd.inference.quantize: QDQ, per-channel, Conv only, the first and last float)
calibrated on patches of the preprocessed training cases, as `nnkd_export --int8` calibrates on the fold's training
cases. bf16 (not in the default runtimes) is `nnkd_predict --bf16`: the torch network under CPU bf16 autocast, on
CPUs with AVX512-BF16 or AMX.

Each measurement is nnU-Net's whole per-case prediction from the NIfTI file to the written label map, the five
steps timed by `nnkd_predict --profile`'s code (read, preprocess, network = sliding window with or without
mirroring, resample, write; nnkd.evaluation.case_latency), after one warm-up patch through the network; the median of --repeats runs in each of
--rounds rounds of every model × runtime side by side (docs/deploy.md's table: 3 rounds).
Measurements are kept in WORK/measurements.json as they finish, so an interrupted run resumes where it stopped
and several calls (e.g. one per runtime) build one report. Writes OUT/report.md, results.json and latency.png.
Keep the machine quiet while it runs.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nnkd.atomic import write_json_atomic
from nnkd.evaluation.runtimes import DEPLOY_RUNTIME_LABELS as RUNTIME_LABELS, RUNTIMES as DEFAULT_RUNTIMES, runtime_label

RUNTIMES = tuple(RUNTIME_LABELS)

REPO = Path(__file__).resolve().parents[1]
CASES = {"ct": 996, "colin27": 997, "synthetic": 990}
CONFIGURATION = "3d_fullres"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    parser.add_argument("--work", type=Path, default=None,
                        help="nnU-Net tree and measurements (default: $TMPDIR/nnkd_deploy_latency/CASE); kept, "
                             "so a rerun resumes")
    parser.add_argument("--shape", type=int, nargs=3, default=(150, 300, 300), metavar=("Z", "Y", "X"),
                        help="--case ct: the case's size in voxels (default 150 300 300)")
    parser.add_argument("--budgets", default="tiny,small", help="student budgets (default tiny,small)")
    parser.add_argument("--latency-student", type=float, default=None, metavar="MS",
                        help="also plan a student with --max-latency MS (ms per patch on this machine)")
    parser.add_argument("--models", default=None, help="measure only these models (default: all)")
    parser.add_argument("--runtimes", default=",".join(DEFAULT_RUNTIMES),
                        help="default torch,onnx,int8; bf16: torch under CPU bf16 autocast (nnkd_predict --bf16)")
    parser.add_argument("--mirroring", default="off,on", help="off, on or off,on (default)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per measurement (median; default 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of every model × runtime side by side, --repeats runs each per round (the "
                             "median over all rounds; a machine that drifts by ~15 %% over minutes then moves every "
                             "model alike; default 1)")
    parser.add_argument("--remeasure", type=int, default=5,
                        help="with --latency-student: measure its patch latency again in N fresh processes (median)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="make the case, plans and ONNX/int8 files, measure nothing (then time on a quiet machine)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default docs/benchmarks/deploy_CASE)")
    args = parser.parse_args()
    args.work = (args.work or Path(tempfile.gettempdir()) / "nnkd_deploy_latency" / args.case).resolve()
    args.out = args.out or REPO / "docs" / "benchmarks" / f"deploy_{args.case}"
    unknown = set(args.runtimes.split(",")) - set(RUNTIMES) or set(args.mirroring.split(",")) - {"off", "on"}
    if unknown:
        parser.error(f"unknown runtime or mirroring value(s): {', '.join(sorted(unknown))}")
    if "bf16" in args.runtimes.split(","):
        import torch

        from nnkd.errors import NnkdError
        from nnkd.inference.predict import check_bf16

        try:
            check_bf16(torch.device("cpu"), onnx=False)
        except NnkdError as error:
            parser.error(f"--runtimes bf16: {error}")
    return args


# --------------------------------------------------------------------------------------------- the case

def _write_like(array: np.ndarray, reference, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    image.SetOrigin(reference.GetOrigin())
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    sitk.WriteImage(image, str(tmp), useCompression=True)
    tmp.replace(path)


def prepare_case(args) -> tuple[str, list[Path]]:
    """The raw dataset that plans the models (made once), and the case file(s) to predict."""
    import SimpleITK as sitk

    from nnkd.datasets.synthetic import SyntheticSpec, write_synthetic_dataset

    raw = Path(os.environ["nnUNet_raw"])
    cases = args.work / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    if args.case == "synthetic":
        spec = SyntheticSpec(CASES["synthetic"])
        if not (raw / spec.folder_name).is_dir():
            write_synthetic_dataset(spec, raw)
        return spec.folder_name, sorted((raw / spec.folder_name / "imagesTs").glob("*_0000.nii.gz"))
    if args.case == "ct":
        spec = SyntheticSpec(CASES["ct"], cases=2, test_cases=1, shape=tuple(args.shape), name="CTLike")
        if not (raw / spec.folder_name).is_dir():
            write_synthetic_dataset(spec, raw)
        target = cases / f"ct_{'x'.join(map(str, args.shape))}_0000.nii.gz"
        if not target.is_file():
            source = sitk.ReadImage(str(raw / spec.folder_name / "imagesTs" / "test_000_0000.nii.gz"))
            array = sitk.GetArrayFromImage(source)
            if any(s < t for s, t in zip(array.shape, args.shape)):  # the generator jitters sizes by ±15 %
                array = np.pad(array, [(0, max(0, t - s)) for s, t in zip(array.shape, args.shape)], mode="edge")
            start = [(s - t) // 2 for s, t in zip(array.shape, args.shape)]
            crop = array[tuple(slice(a, a + t) for a, t in zip(start, args.shape))]
            _write_like(np.ascontiguousarray(crop), source, target)
        return spec.folder_name, [target]
    return _prepare_colin27(raw, cases)


def _prepare_colin27(raw: Path, cases: Path) -> tuple[str, list[Path]]:
    import SimpleITK as sitk

    sys.path.insert(0, str(REPO / "benchmarks"))
    from colin27_dataset import BRAIN, HEAD, fetch_sources, load_colin27

    name = f"Dataset{CASES['colin27']:03d}_Colin27Head"
    sources, _ = fetch_sources(raw.parent / "nnkd_sources" / "mricron-data", None)
    target = cases / "colin27_1mm_0000.nii.gz"
    if not target.is_file():
        shutil.copyfile(sources[HEAD], target)
    if not (raw / name).is_dir():
        staging = raw / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        for sub in ("imagesTr", "labelsTr"):
            (staging / sub).mkdir(parents=True)
        head = sitk.ReadImage(str(sources[HEAD]))
        image = sitk.GetArrayFromImage(head)
        brain = load_colin27(sources).brain.astype(np.uint8)
        for i, flip in enumerate((False, True)):  # the head and its left-right mirror image
            _write_like(image[..., ::-1].copy() if flip else image, head, staging / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
            _write_like(brain[..., ::-1].copy() if flip else brain, head, staging / "labelsTr" / f"case_{i:03d}.nii.gz")
        (staging / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "T1"}, "labels": {"background": 0, "brain": 1}, "numTraining": 2,
            "file_ending": ".nii.gz", "name": name,
            "description": f"Colin27 {HEAD} at 1 mm and its mirror image, brain = {BRAIN} > 0 (deploy_latency)"},
            indent=2) + "\n")
        staging.replace(raw / name)
    return name, [target]


# ------------------------------------------------------------------------------------------- the models

def plan_models(args, dataset: str) -> list[tuple[str, str]]:
    """(model, plans name) for the teacher and each student; plans and the teacher's preprocessing made once."""
    from nnkd.planners.budget import Budget
    from nnkd.planners.plan_and_preprocess import plan_and_preprocess

    folder = Path(os.environ["nnUNet_preprocessed"]) / dataset
    budgets = [(b, Budget(preset=b), f"nnKDPlans_{b}") for b in args.budgets.split(",") if b]
    if args.latency_student:
        ms = args.latency_student
        budgets.append((f"latency{ms:g}ms", Budget(max_latency_ms=ms), f"nnKDPlans_latency{ms:g}ms"))
    models = [("teacher", "nnUNetPlans")]
    for i, (model, budget, plans_name) in enumerate(budgets):
        if not (folder / f"{plans_name}.json").is_file() or not (folder / "nnUNetPlans_3d_fullres").is_dir():
            plan_and_preprocess(dataset, budget, configurations=[CONFIGURATION], num_processes=1, preprocess=True)
        models.append((model, plans_name))
    return models


def build_model(args, dataset: str, model: str, plans_name: str) -> dict:
    """The network (random weights, seed 0), its fp32 and int8 ONNX files (made once), and its size."""
    import torch

    from nnkd.inference.onnx_export import export_onnx
    from nnkd.inference.quantize import calibration_patches, quantize_student
    from nnkd.plans import PreprocessedConfiguration, network_from_plans, num_input_channels

    config = PreprocessedConfiguration.load(dataset, plans_name, CONFIGURATION)
    plans, dataset_json = config.plans, config.dataset_json
    configuration = plans["configurations"][CONFIGURATION]
    torch.manual_seed(0)
    network = network_from_plans(plans, CONFIGURATION, dataset_json).eval()
    channels = num_input_channels(plans, CONFIGURATION, dataset_json)
    models = args.work / "models"
    models.mkdir(parents=True, exist_ok=True)
    fp32, int8 = models / f"{model}.onnx", models / f"{model}.int8.onnx"
    if not fp32.is_file():
        print(f"{model}: exporting ONNX", flush=True)
        export_onnx(network, channels, configuration["patch_size"], fp32)
    if not int8.is_file():
        data = config.data_folder
        cases = sorted(p.stem for p in data.glob("*.pkl"))  # one properties file per preprocessed case
        print(f"{model}: int8 quantization, calibrated on {len(cases)} training case(s)", flush=True)
        quantize_student(fp32, int8, calibration_patches(data, cases, configuration["patch_size"]))
    from nnkd.planners.network_cost import measure as network_cost
    from nnkd.plans import num_segmentation_heads

    student = configuration.get("nnkd_student", {})
    gflops = network_cost(configuration["architecture"], channels, num_segmentation_heads(plans, dataset_json),
                          configuration["patch_size"]).gflops  # on the meta device: nothing is computed
    return {"plans": plans, "dataset_json": dataset_json, "network": network, "channels": channels,
            "onnx": {"onnx": fp32, "int8": int8}, "params": sum(p.numel() for p in network.parameters()),
            "gflops_per_patch": round(float(gflops), 2), "patch_size": list(configuration["patch_size"]),
            "latency_ms_planned": student.get("latency_ms")}


def _fresh_processes(each: list | None) -> str:
    return f" (median of {len(each)} fresh processes: {', '.join(f'{x:.0f}' for x in each)})" if each else ""


def remeasure_in_fresh_process(architecture: dict, channels: int, classes: int, patch_size) -> float:
    """The planner's own patch latency (nnkd.planners.latency.measure_patch_latency, torch on the CPU) of an
    architecture, measured in a new Python process."""
    code = ("import json, sys; from nnkd.planners.latency import measure_patch_latency; "
            "a = json.loads(sys.argv[1]); print(measure_patch_latency(a['architecture'], a['channels'], a['classes'], "
            "a['patch_size'], 'cpu', 'torch'))")
    arguments = json.dumps({"architecture": architecture, "channels": channels, "classes": classes,
                            "patch_size": list(patch_size)})
    out = subprocess.run([sys.executable, "-c", code, arguments], capture_output=True, text=True, check=True)
    return round(float(out.stdout.split()[-1]), 1)


# ------------------------------------------------------------------------------------------------ report

def load_measurements(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"measurements": {}}


def report(args, record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"model": m, "runtime": r, "mirroring": mi == "on", **v}
            for key, v in record["measurements"].items() for m, r, mi in [key.split("/")]]
    sizes = record["models"]
    order = {m: i for i, m in enumerate(sizes)}
    rows.sort(key=lambda r: (r["mirroring"], order.get(r["model"], 99), RUNTIMES.index(r["runtime"])))
    base = {(r["mirroring"], r["runtime"]): r["seconds_per_case"] for r in rows if r["model"] == "teacher"}
    teacher = sizes.get("teacher", {})
    for r in rows:
        reference = base.get((r["mirroring"], "torch"))
        r["faster_than_teacher_torch"] = round(reference / r["seconds_per_case"], 2) if reference else None
        same = base.get((r["mirroring"], r["runtime"]))
        r["faster_than_teacher_same_runtime"] = round(same / r["seconds_per_case"], 2) if same else None
        r["speedup_same_runtime"] = r["faster_than_teacher_same_runtime"]  # issue 46's name for it
        if teacher:  # the physical limit of that speed-up
            r["gflops_ratio"] = round(teacher["gflops_per_patch"] / sizes[r["model"]]["gflops_per_patch"], 2)
            r["share_of_gflops_ratio"] = (round(r["speedup_same_runtime"] / r["gflops_ratio"], 2)
                                          if r["speedup_same_runtime"] else None)
    m = record["machine"]
    case = rows[0] if rows else {}
    lines = [f"# Per-case latency: {args.case} case", "",
             f"Machine: {m.get('cpu') or m['processor'] or m['machine']}"
             + (f" ({', '.join(m['cpu_features'])})" if m.get("cpu_features") else "")
             + f", {m['cpus']} CPUs, {m['torch_threads']} torch threads, "
             f"torch {m['torch']}, onnxruntime {m['onnxruntime']}. Case: {case.get('original_shape')} voxels "
             f"({case.get('preprocessed_shape')} after nnU-Net's preprocessing). "
             "Random weights (seed 0): time does not depend on them. Each number is nnU-Net's whole per-case "
             "prediction from the NIfTI file to the written label map, median (min) of the runs shown"
             + (f", measured in {args.rounds} rounds of every model × runtime side by side (each round's median per "
                "case: results.json, `seconds_per_case_each_round`)" if args.rounds > 1 else "")
             + "; network = sliding "
             "window (step 0.5, Gaussian), with mirroring = nnU-Net's default 8-flip test-time augmentation.", "",
             "| model | params | GFLOPs / patch | patches | mirroring | runtime | s / case (min) | network s "
             "| network share | × faster than teacher torch fp32 | × faster than teacher, same runtime "
             "(of the GFLOPs ratio) | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = sizes[r["model"]]
        lines.append(f"| {r['model']} | {s['params'] / 1e6:.2f} M | {s['gflops_per_patch']:.1f} | {r['patches']} | "
                     f"{'on' if r['mirroring'] else 'off'} | {runtime_label(r)} | {r['seconds_per_case']:.2f}"
                     + (f" ({r['seconds_per_case_min']:.2f})" if "seconds_per_case_min" in r else "")
                     + f" | {r['steps']['network']:.2f} | {r['network_share']:.0%} | "
                     f"{r['faster_than_teacher_torch'] or '–'} | {r['faster_than_teacher_same_runtime'] or '–'}"
                     + (f" ({r['share_of_gflops_ratio']:.0%} of {r['gflops_ratio']}×)"
                        if r.get("share_of_gflops_ratio") else "") + f" | {r['runs']} |")
    lines += ["", "Where the time goes (median seconds per step):", "",
              "| model | mirroring | runtime | read | preprocess | network | resample | write |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        st = r["steps"]
        lines.append(f"| {r['model']} | {'on' if r['mirroring'] else 'off'} | {runtime_label(r)} | "
                     f"{st['read']:.2f} | {st['preprocess']:.2f} | {st['network']:.2f} | {st['resample']:.2f} | "
                     f"{st['write']:.2f} |")
    if teacher:
        lines += ["", "Sizes: " + "; ".join(f"{k} {v['params'] / 1e6:.2f} M params ({teacher['params'] / v['params']:.1f}"
                                             f"× fewer), {v['gflops_per_patch']:.1f} GFLOPs/patch "
                                             f"({teacher['gflops_per_patch'] / v['gflops_per_patch']:.1f}× fewer)"
                                             + (f", planned at {v['latency_ms_planned']:.0f} ms/patch, "
                                                f"{v.get('latency_ms_remeasured', float('nan')):.0f} ms measured again"
                                                + _fresh_processes(v.get("latency_ms_remeasured_each"))
                                                if v.get("latency_ms_planned") else "")
                                             for k, v in sizes.items())]
    lines += ["", "![latency per case](latency.png)"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    write_json_atomic(args.out / "results.json", {"case": args.case, "machine": m, "models": sizes, "rows": rows})

    panels = [m for m in (False, True) if any(r["mirroring"] == m for r in rows)]  # the settings measured
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 0.5, 4.5), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, mirroring in zip(axes, panels):
        for runtime, marker in zip(RUNTIMES, "osD^*"):
            sel = [r for r in rows if r["mirroring"] == mirroring and r["runtime"] == runtime]
            sel.sort(key=lambda r: sizes[r["model"]]["gflops_per_patch"])
            ax.plot([sizes[r["model"]]["gflops_per_patch"] for r in sel], [r["seconds_per_case"] for r in sel],
                    marker=marker, label=RUNTIME_LABELS[runtime])
            for r in sel if runtime == "torch" else []:
                ax.annotate(r["model"], (sizes[r["model"]]["gflops_per_patch"], r["seconds_per_case"]),
                            textcoords="offset points", xytext=(5, 6), fontsize=8)
        ax.set(xscale="log", yscale="log", xlabel="GFLOPs per patch",
               title=f"mirroring {'on' if mirroring else 'off'}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("CPU seconds per case")
    axes[0].legend()
    fig.suptitle(f"nnU-Net per-case prediction, {args.case} case {case.get('original_shape')}")
    fig.tight_layout()
    fig.savefig(args.out / "latency.png", dpi=100)
    print("\n".join(lines[:len(rows) + 6]))
    print(f"wrote {args.out / 'report.md'}, results.json, latency.png")


# -------------------------------------------------------------------------------------------------- main

def main() -> None:
    args = parse_args()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):  # before nnU-Net is imported
        os.environ[name] = str(args.work / name)
        Path(os.environ[name]).mkdir(parents=True, exist_ok=True)
    import onnxruntime

    from nnkd.evaluation.case_latency import pool_rounds, time_cases
    from nnkd.planners.latency import machine

    dataset, cases = prepare_case(args)
    models = plan_models(args, dataset)
    wanted = set(args.models.split(",")) if args.models else None
    path = args.work / "measurements.json"
    record = load_measurements(path)
    record["machine"] = {**machine(), "onnxruntime": onnxruntime.__version__}
    record.setdefault("models", {})
    measured = {}
    for model, plans_name in models:
        built = build_model(args, dataset, model, plans_name)
        record["models"][model] = {**record["models"].get(model, {}), "plans": plans_name,
                                   **{k: built[k] for k in ("params", "gflops_per_patch", "patch_size",
                                                            "latency_ms_planned")}}
        write_json_atomic(path, record)
        if args.prepare_only or (wanted is not None and model not in wanted):
            continue
        measured[model] = built
        planned = record["models"][model]["latency_ms_planned"]
        if planned and "latency_ms_remeasured" not in record["models"][model]:
            # the --max-latency target: the planned latency, measured again as the planner measures it, each time
            # in a fresh process (a process's memory state moves a large patch's time; docs/deploy.md)
            from nnkd.plans import num_segmentation_heads

            configuration = built["plans"]["configurations"][CONFIGURATION]
            again = [remeasure_in_fresh_process(configuration["architecture"], built["channels"],
                                                num_segmentation_heads(built["plans"], built["dataset_json"]),
                                                built["patch_size"]) for _ in range(args.remeasure)]
            record["models"][model]["latency_ms_remeasured_each"] = again
            record["models"][model]["latency_ms_remeasured"] = round(statistics.median(again), 1)
            write_json_atomic(path, record)
    for round_number in range(args.rounds):  # every model × runtime once per round, side by side
        for mirroring in args.mirroring.split(","):
            for model, built in measured.items():
                for runtime in args.runtimes.split(","):
                    key = f"{model}/{runtime}/{mirroring}"
                    rounds = record["measurements"].get(key, {}).get("rounds", [])
                    if len(rounds) > round_number or (key in record["measurements"] and not rounds):
                        continue  # measured already (a measurement of an earlier version has no rounds: kept)
                    started = time.time()
                    print(f"measuring {key}, round {round_number + 1} of {args.rounds} ...", flush=True)
                    rounds = rounds + [time_cases(built, CONFIGURATION, runtime, mirroring == "on", cases,
                                                  args.repeats)]
                    record["measurements"][key] = pool_rounds(rounds, mirroring == "on")
                    print(f"  {record['measurements'][key]['seconds_per_case_each_round'][-1]:.2f} s per case "
                          f"({time.time() - started:.0f} s)", flush=True)
                    write_json_atomic(path, record)
    if record["measurements"]:
        report(args, record)


if __name__ == "__main__":
    main()
