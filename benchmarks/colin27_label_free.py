"""Colin27 without annotation: a student distilled from deepbet's masks alone, against one trained on the BET labels.

    python benchmarks/colin27_label_free.py --bet 995 --deepbet 996 --seeds 0 1 2 \
        --students 2d:nnKDPlans_gflops0.08 3d_fullres:nnKDPlans_gflops2.4-nnUNetPlans_3.2mm [--labels bet deepbet] \
        [--teacher "deepbet?axes=2,1,0&size=192,192,192"] [--no-timing] -o OUT

Expects (the commands are in docs/studies/colin27.md): the Colin27 dataset (`colin27_dataset.py -d 995`), its copy
labelled by deepbet (`nnkd_pseudo_label -d 996 --from-dataset 995 --teacher …`), the student plans on both, and
the students `nnkd_train D CONFIG 0 -p PLANS --method none --seed S` on each dataset. For every student
(CONFIG:PLANS), every seed and each dataset of --labels (bet: 995's BET labels, deepbet: 996's masks) it then

- reads nnU-Net's validation of fold 0 (with mirroring; against the dataset's own labels: BET for 995, deepbet's
  masks for 996);
- predicts the held-out test images (imagesTs of --bet, never seen in training) with nnU-Net's per-case
  prediction of the student, no mirroring, and scores them against the BET labels (labelsTs of --bet) and
  against deepbet's masks (labelsTs of --deepbet);
- counts the FLOPs of one whole test case (torch's FlopCounterMode around nnU-Net's prediction of the case:
  every sliding-window patch), and of deepbet segmenting the same case the way it labelled the data;
- unless --no-timing: seconds per case (median over the test cases after a warm-up case), the student in torch
  through nnU-Net's pipeline, deepbet through the same whole-case path that labelled the data; one torch thread
for both.

Writes OUT/results.json, OUT/report.md and OUT/dice_vs_cost.png. Timings need a quiet machine.
"""

import argparse
import itertools
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
    """Dice of two brain masks, as nnkd.metrics (nnU-Net's evaluation) counts it."""
    from nnkd.metrics import dice_per_label

    return dice_per_label(a.astype(np.uint8), b.astype(np.uint8), [1]).get(1, float("nan"))


def read_mask(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def counted(fn):
    """fn's result and the GFLOPs it took (torch's FlopCounterMode: convolutions and matrix products)."""
    with torch.no_grad(), FlopCounterMode(display=False, depth=0) as counter:
        out = fn()
    return out, counter.get_total_flops() / 1e9


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
    parser.add_argument("--students", nargs="+", default=["2d:nnKDPlans_gflops0.08"], metavar="CONFIG:PLANS",
                        help="student configurations and plans, e.g. 2d:nnKDPlans_gflops0.08")
    parser.add_argument("--labels", nargs="+", choices=("bet", "deepbet"), default=["bet", "deepbet"],
                        help="which students: trained on BET's labels (--bet), on deepbet's masks (--deepbet)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher", default="deepbet?axes=2,1,0&size=192,192,192",
                        help="the spec that labelled --deepbet")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("-o", type=Path, required=True)
    args = parser.parse_args()
    students = [tuple(s.split(":", 1)) for s in args.students]
    if any(len(s) != 2 for s in students):
        parser.error("--students takes CONFIG:PLANS, e.g. 2d:nnKDPlans_gflops0.08")

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnkd.errors import NnkdError
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
    teacher_flops = [counted(lambda: teacher.segment([str(p)]))[1] for p in test_images]
    result = {"settings": vars(args) | {"o": str(args.o)}, "versions": software_versions(), "test_cases": cases,
              "teacher": {"spec": args.teacher, "params": sum(p.numel() for p in teacher.teacher.parameters()),
                          "gflops_per_case": float(np.mean(teacher_flops))}, "runs": []}
    if not args.no_timing:
        result["teacher"]["seconds_per_case"] = time_cases(lambda i: teacher.segment([str(test_images[i])]),
                                                           len(test_images))
    for (configuration, plans), labels_from, seed in itertools.product(students, args.labels, args.seeds):
        dataset = args.bet if labels_from == "bet" else args.deepbet
        try:
            located, predictor = student(dataset, configuration, plans, seed)
        except NnkdError as e:  # a student not trained (yet): the others are still measured
            print(f"{configuration}:{plans} {labels_from} s{seed}: left out ({e.problem})", file=sys.stderr)
            continue
        folder = args.o / f"{configuration}-{plans}" / f"{labels_from}-s{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        case_gflops = []
        for case, image, properties in images:  # predicted once: written, and its FLOPs counted on the way
            segmentation, gflops = counted(lambda: predictor.predict_single_npy_array(image, properties))
            io.write_seg(segmentation, str(folder / f"{case}.nii.gz"), properties)
            case_gflops.append(gflops)
        predicted = {case: read_mask(folder / f"{case}.nii.gz") for case in cases}
        summary = json.loads((located.model_folder / "fold_0" / "validation" / "summary.json").read_text())
        run = {"student": f"{configuration}:{plans}", "configuration": configuration, "plans": plans,
               "labels": labels_from, "dataset": located.dataset_name, "seed": seed,
               "params": sum(p.numel() for p in predictor.network.parameters()),
               "validation_dice_own_labels": summary["foreground_mean"]["Dice"],
               "test_dice_vs_bet": [dice(predicted[c], read_mask(bet / "labelsTs" / f"{c}.nii.gz")) for c in cases],
               "test_dice_vs_deepbet": [dice(predicted[c], read_mask(deepbet / "labelsTs" / f"{c}.nii.gz"))
                                        for c in cases],
               "gflops_per_case": float(np.mean(case_gflops))}
        if not args.no_timing:
            run["seconds_per_case"] = time_cases(lambda i: predictor.predict_single_npy_array(*images[i][1:]),
                                                 len(images))
        result["runs"].append(run)
        print(f"{configuration}:{plans} {labels_from} s{seed}: test Dice vs BET "
              f"{np.mean(run['test_dice_vs_bet']):.4f}, vs deepbet {np.mean(run['test_dice_vs_deepbet']):.4f}, "
              f"{run['gflops_per_case']:.2f} GFLOPs/case",
              file=sys.stderr)
    result["teacher"]["test_dice_vs_bet"] = [dice(read_mask(deepbet / "labelsTs" / f"{c}.nii.gz"),
                                                  read_mask(bet / "labelsTs" / f"{c}.nii.gz")) for c in cases]
    (args.o / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.o / "report.md").write_text(report(result))
    plot(result, args.o / "dice_vs_cost.png")
    print(report(result))


def plot(result: dict, path: Path) -> None:
    """Test Dice against BET and against deepbet's masks, by GFLOPs per case (and seconds per case if timed).
    deepbet is a star where BET is the reference; where its own masks are, it is a dashed line at its cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    costs = [("gflops_per_case", "GFLOPs per case")] + (
        [("seconds_per_case", "seconds per case (one CPU thread, torch)")] if "seconds_per_case" in result["teacher"]
        else [])
    fig, axes = plt.subplots(len(costs), 2, figsize=(10, 3.6 * len(costs) + 1.4), squeeze=False)
    t = result["teacher"]
    grouped = groups(result)
    for row, (key, label) in enumerate(costs):
        for col, (score, title) in enumerate((("test_dice_vs_bet", "Dice vs BET (test cases)"),
                                              ("test_dice_vs_deepbet", "Dice vs deepbet's masks (test cases)"))):
            ax = axes[row][col]
            if score == "test_dice_vs_bet":
                ax.scatter([t[key]], [np.mean(t[score])], marker="*", s=160, color="black", label="deepbet")
            else:
                ax.axvline(t[key], color="black", linestyle="--", label="deepbet's cost")
            for (student, labels, runs), marker in zip(grouped, "osD^v<>p"):
                ax.scatter([r[key] for r in runs], [np.mean(r[score]) for r in runs], marker=marker, alpha=0.8,
                           color="tab:blue" if labels == "bet" else "tab:orange",
                           label=f"{student}, trained on {labels_name(labels)} (one dot per seed)")
            if key == "gflops_per_case":
                ax.axvline(t[key] / 10, color="grey", linestyle=":", label="1/10 of deepbet's GFLOPs")
            values = [t[key], t[key] / 10 if key == "gflops_per_case" else t[key]] + [r[key] for r in result["runs"]]
            ax.set_xscale("log")
            ax.set_xlim(min(values) / 1.5, max(values) * 1.5)
            ticks = []  # the costs themselves (deepbet's, each student's median), in plain numbers, none crowded
            medians = [float(np.median([r[key] for r in runs])) for _, _, runs in grouped]
            for v in sorted(values[:2] + medians):
                if not ticks or v > ticks[-1] * 1.15:
                    ticks.append(float(f"{v:.2g}"))
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(label)
            ax.set_ylabel("Dice")
            ax.set_title(title)
            ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for h, text in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(text, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=1, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.22 * (len(handles) + 1) / fig.get_figheight(), 1, 1))  # room for the legend
    fig.savefig(path, dpi=110)
    plt.close(fig)


def time_cases(run_case, n: int) -> float:
    seconds = []
    for i in [0] + list(range(n)):
        start = time.perf_counter()
        run_case(i)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def groups(result: dict) -> list[tuple[str, str, list[dict]]]:
    """The runs by (student, labels), in the order they were measured."""
    def key(run):
        return run["student"], run["labels"]

    keys = list(dict.fromkeys(key(r) for r in result["runs"]))
    return [(*k, [r for r in result["runs"] if key(r) == k]) for k in keys]


def labels_name(labels: str) -> str:
    return "BET labels (995)" if labels == "bet" else "deepbet's masks only (996)"


def report(result: dict) -> str:
    t = result["teacher"]
    timing = "seconds_per_case" in t
    lines = ["# Colin27 without annotation: deepbet's masks as the only labels", "",
             f"Test cases: {', '.join(result['test_cases'])} (imagesTs, never trained on). Student prediction: "
             "nnU-Net's per-case pipeline, no mirroring. Mean ± std over seeds of the per-seed mean over the cases; "
             "seconds per case: median over the cases, one torch thread.", "",
             "| model | labels trained on | params | GFLOPs / case | × fewer GFLOPs than deepbet | "
             "Dice vs BET (test) | Dice vs deepbet (test) | nnU-Net validation (own labels, mirroring) |"
             + (" s / case | × faster than deepbet |" if timing else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if timing else ""),
             f"| deepbet (`{t['spec']}`) | – | {t['params'] / 1e6:.2f} M | {t['gflops_per_case']:.1f} | 1 | "
             f"{np.mean(t['test_dice_vs_bet']):.4f} | 1 | – |"
             + (f" {t['seconds_per_case']:.2f} | 1 |" if timing else "")]
    for student, labels, runs in groups(result):
        def ms(key, runs=runs):
            values = [float(np.mean(r[key])) for r in runs]
            return f"{np.mean(values):.4f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}"

        gflops = float(np.mean([r["gflops_per_case"] for r in runs]))
        seconds = float(np.median([r["seconds_per_case"] for r in runs])) if timing else None
        lines.append(f"| `{student}`, {len(runs)} seeds | {labels_name(labels)} | "
                     f"{runs[0]['params'] / 1e6:.3f} M | {gflops:.2f} | {t['gflops_per_case'] / gflops:.1f} | "
                     f"{ms('test_dice_vs_bet')} | {ms('test_dice_vs_deepbet')} | {ms('validation_dice_own_labels')} |"
                     + (f" {seconds:.2f} | {t['seconds_per_case'] / seconds:.1f} |" if timing else ""))
    lines += ["", "Per seed (test Dice vs BET / vs deepbet):"]
    for r in result["runs"]:
        lines.append(f"- `{r['student']}` {r['labels']} s{r['seed']}: "
                     f"{np.mean(r['test_dice_vs_bet']):.4f} / {np.mean(r['test_dice_vs_deepbet']):.4f}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
