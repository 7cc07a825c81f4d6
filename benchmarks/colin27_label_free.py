"""Colin27 without annotation: a student distilled from deepbet's masks alone, against one trained on the BET labels.

    python benchmarks/colin27_label_free.py --bet 995 --deepbet 996 -p nnKDPlans_gflops0.08 -c 2d --seeds 0 1 2 \
        [--teacher "deepbet?axes=2,1,0&size=192,192,192"] [--no-timing] -o OUT

Expects (the commands are in docs/benchmarks.md): the Colin27 dataset (`colin27_dataset.py -d 995`), its copy
labelled by deepbet (`nnkd_pseudo_label -d 996 --from-dataset 995 --teacher …`), the student plans on both, and
the students `nnkd_train D CONFIG 0 -p PLANS --method none --seed S` on each dataset. For every seed and both
datasets it then

- reads nnU-Net's validation of fold 0 (with mirroring; against the dataset's own labels: BET for 995, deepbet's
  masks for 996);
- predicts the held-out test images (imagesTs of --bet, never seen in training) with nnU-Net's per-case
  prediction of the student, no mirroring, and scores them against the BET labels (labelsTs of --bet) and
  against deepbet's masks (labelsTs of --deepbet);
- counts the FLOPs of one whole test case (torch's FlopCounterMode around nnU-Net's prediction of the case:
  every sliding-window patch), and of deepbet segmenting the same case the way it labelled the data;
- unless --no-timing: seconds per case (median over the test cases after a warm-up case), the student in torch
  through nnU-Net's pipeline, deepbet through the same whole-case path that labelled the data.

Writes OUT/results.json and OUT/report.md. Timings need a quiet machine.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def read_mask(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def flops(fn) -> float:
    with torch.no_grad(), FlopCounterMode(display=False, depth=0) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def student(dataset: str, configuration: str, plans: str, seed: int):
    from nnkd.inference.predict import make_predictor
    from nnkd.inference.students import StudentRef, load_student_weights, locate
    from nnkd.plans import network_from_plans

    located = locate(StudentRef(dataset=dataset, configuration=configuration, folds=["0"], plans=plans,
                                method="none", run_name=f"s{seed}"))
    weights, first = load_student_weights(located)
    network = network_from_plans(located.plans, configuration, located.dataset_json, allow_init=False)
    predictor = make_predictor(located.plans, configuration, located.dataset_json, weights, network,
                               first.get("inference_allowed_mirroring_axes"), torch.device("cpu"),
                               use_mirroring=False)
    predictor.allow_tqdm = False
    return located, predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bet", default="995", help="the Colin27 dataset with BET labels")
    parser.add_argument("--deepbet", default="996", help="the same images labelled by deepbet (nnkd_pseudo_label)")
    parser.add_argument("-p", default="nnKDPlans_gflops0.08", help="the student plans")
    parser.add_argument("-c", default="2d", help="the configuration")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher", default="deepbet?axes=2,1,0&size=192,192,192",
                        help="the spec that labelled --deepbet")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("-o", type=Path, required=True)
    args = parser.parse_args()

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnkd.nnunet_env import find_dataset_name, require_env
    from nnkd.pipeline.pseudo_labels import WholeCaseTeacher
    from nnkd.records import software_versions
    from nnkd.teachers.registry import create_teacher

    torch.set_num_threads(1)
    raw = require_env("nnUNet_raw")["nnUNet_raw"]
    bet, deepbet = raw / find_dataset_name(args.bet), raw / find_dataset_name(args.deepbet)
    test_images = sorted((bet / "imagesTs").glob("*_0000.nii.gz"))
    cases = [p.name[: -len("_0000.nii.gz")] for p in test_images]
    io = SimpleITKIO()
    images = [(case, *io.read_images([str(path)])) for case, path in zip(cases, test_images)]
    args.o.mkdir(parents=True, exist_ok=True)

    teacher = WholeCaseTeacher(create_teacher(args.teacher), ".nii.gz", torch.device("cpu"))
    teacher_flops = [flops(lambda: teacher.segment([str(p)])) for p in test_images]
    result = {"settings": vars(args) | {"o": str(args.o)}, "versions": software_versions(), "test_cases": cases,
              "teacher": {"spec": args.teacher, "params": sum(p.numel() for p in teacher.teacher.parameters()),
                          "gflops_per_case": float(np.mean(teacher_flops))}, "runs": []}
    if not args.no_timing:
        result["teacher"]["seconds_per_case"] = time_cases(lambda i: teacher.segment([str(test_images[i])]),
                                                           len(test_images))
    for labels_from, dataset in (("bet", args.bet), ("deepbet", args.deepbet)):
        for seed in args.seeds:
            located, predictor = student(dataset, args.c, args.p, seed)
            folder = args.o / f"{labels_from}-s{seed}"
            folder.mkdir(exist_ok=True)
            for case, image, properties in images:
                io.write_seg(predictor.predict_single_npy_array(image, properties), str(folder / f"{case}.nii.gz"),
                             properties)
            predicted = {case: read_mask(folder / f"{case}.nii.gz") for case in cases}
            summary = json.loads((located.model_folder / "fold_0" / "validation" / "summary.json").read_text())
            run = {"labels": labels_from, "dataset": located.dataset_name, "seed": seed,
                   "params": sum(p.numel() for p in predictor.network.parameters()),
                   "validation_dice_own_labels": summary["foreground_mean"]["Dice"],
                   "test_dice_vs_bet": [dice(predicted[c], read_mask(bet / "labelsTs" / f"{c}.nii.gz")) for c in cases],
                   "test_dice_vs_deepbet": [dice(predicted[c], read_mask(deepbet / "labelsTs" / f"{c}.nii.gz"))
                                            for c in cases],
                   "gflops_per_case": float(np.mean([flops(lambda: predictor.predict_single_npy_array(i, p))
                                                     for _, i, p in images]))}
            if not args.no_timing:
                run["seconds_per_case"] = time_cases(lambda i: predictor.predict_single_npy_array(*images[i][1:]),
                                                     len(images))
            result["runs"].append(run)
            print(f"{labels_from} s{seed}: test Dice vs BET {np.mean(run['test_dice_vs_bet']):.4f}, vs deepbet "
                  f"{np.mean(run['test_dice_vs_deepbet']):.4f}, {run['gflops_per_case']:.2f} GFLOPs/case",
                  file=sys.stderr)
    result["teacher"]["test_dice_vs_bet"] = [dice(read_mask(deepbet / "labelsTs" / f"{c}.nii.gz"),
                                                  read_mask(bet / "labelsTs" / f"{c}.nii.gz")) for c in cases]
    (args.o / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.o / "report.md").write_text(report(result))
    print(report(result))


def time_cases(run_case, n: int) -> float:
    seconds = []
    for i in [0] + list(range(n)):
        start = time.perf_counter()
        run_case(i)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def report(result: dict) -> str:
    t = result["teacher"]
    timing = "seconds_per_case" in t
    lines = ["# Colin27 without annotation: deepbet's masks as the only labels", "",
             f"Test cases: {', '.join(result['test_cases'])} (imagesTs, never trained on). Student prediction: "
             "nnU-Net's per-case pipeline, no mirroring. Mean ± std over seeds of the per-seed mean over the cases.", "",
             "| model | labels trained on | params | GFLOPs / case | Dice vs BET (test) | Dice vs deepbet (test) | "
             "nnU-Net validation (own labels, mirroring) |" + (" s / case |" if timing else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if timing else ""),
             f"| deepbet (`{t['spec']}`) | – | {t['params'] / 1e6:.2f} M | {t['gflops_per_case']:.1f} | "
             f"{np.mean(t['test_dice_vs_bet']):.4f} | 1 | – |" + (f" {t['seconds_per_case']:.2f} |" if timing else "")]
    for labels in ("bet", "deepbet"):
        runs = [r for r in result["runs"] if r["labels"] == labels]
        if not runs:
            continue

        def ms(key, runs=runs):
            values = [float(np.mean(r[key])) for r in runs]
            return f"{np.mean(values):.4f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}"

        lines.append(f"| student, {len(runs)} seeds | {'BET (995)' if labels == 'bet' else 'deepbet masks only'} | "
                     f"{runs[0]['params'] / 1e6:.3f} M | {np.mean([r['gflops_per_case'] for r in runs]):.2f} | "
                     f"{ms('test_dice_vs_bet')} | {ms('test_dice_vs_deepbet')} | {ms('validation_dice_own_labels')} |"
                     + (f" {np.median([r['seconds_per_case'] for r in runs]):.2f} |" if timing else ""))
    lines += ["", "Per seed (test Dice vs BET / vs deepbet):"]
    for r in result["runs"]:
        lines.append(f"- {r['labels']} s{r['seed']}: {np.mean(r['test_dice_vs_bet']):.4f} / "
                     f"{np.mean(r['test_dice_vs_deepbet']):.4f}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
