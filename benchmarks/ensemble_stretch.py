"""nnU-Net's usual inference — the 5-fold teacher ensemble with mirroring — against single students without mirroring.

    python benchmarks/ensemble_stretch.py --teacher MODEL_FOLDER [--folds 0 1 2 3 4] --runs RUNS [RUNS ...] \
        [-d 990] [-c 3d_fullres] [--postprocessing] -o OUT

The issue's stretch target: one tiny student predicting without mirroring within 1 Dice point of the teacher
ensemble with mirroring, at >= 100x less compute per case. Expects the teacher trained on every fold of --folds
(`nnkd_train D CONFIG F -p nnUNetPlans --method none --seed S` for each F: one model folder, e.g.
`$nnUNet_results/Dataset990_Synthetic/nnKDTrainer_NoKD@s0__nnUNetPlans__3d_fullres`) and the students as
nnkd_benchmark (or the study scripts) file them: RUNS/<run name>/<dataset>/<model folder>/fold_0, e.g.
`RUNS/tiny-logit-cached-s0` (the run names give method and seed; `benchmarks/runs_report.py` reads the same).

On the dataset's held-out test cases (imagesTs, labelsTs of `-d`, never seen in training) it predicts, with
nnU-Net's predictor (sliding window, step 0.5, Gaussian):
- the teacher ensemble of --folds with mirroring (nnU-Net's default inference), and fold 0 with and without it;
- every finished student of RUNS, fold 0, without mirroring;
and scores each case per class (Dice, a class absent from both prediction and reference left out, as nnU-Net
does) against labelsTs. Compute per case is counted, not estimated: torch's FlopCounterMode around the whole
prediction of each case (every patch, every fold and flip). Writes OUT/results.json and OUT/report.md.

With --postprocessing each model is also scored after nnU-Net's connected-component postprocessing, determined
as nnU-Net determines it (`determine_postprocessing` on the model's validation predictions: the teacher
ensemble's cross-validation of --folds merged by `accumulate_cv_results`, as `nnUNetv2_find_best_configuration`
does; fold 0's validation for fold 0 and each student) and applied to its test predictions. Work files go to
OUT/postprocessing; the model folders are not written.
"""

import argparse
import json
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


def class_dice(predicted: np.ndarray, reference: np.ndarray, labels: list[int]) -> dict[str, float]:
    """nnkd.metrics.dice_per_label (nnU-Net's Dice; a label in neither map left out), keyed as in results.json."""
    from nnkd.metrics import dice_per_label

    return {str(label): value for label, value in dice_per_label(predicted, reference, labels).items()}


def predictor_for(model_folder: Path, folds: list[str], configuration: str, mirroring: bool):
    """nnU-Net's predictor for the folds of a model folder (an nnkd run of any method, or the teacher)."""
    from nnkd.inference.predict import make_predictor
    from nnkd.inference.students import LocatedStudent, fold_checkpoints, load_student_weights, read_model_folder
    from nnkd.plans import network_from_plans

    plans, dataset_json = read_model_folder(model_folder)
    located = LocatedStudent(model_folder.parent.name, model_folder, plans, dataset_json,
                             fold_checkpoints(model_folder, folds), configuration, "none")
    weights, first = load_student_weights(located)
    network = network_from_plans(plans, configuration, dataset_json, allow_init=False)
    predictor = make_predictor(plans, configuration, dataset_json, weights, network,
                               first.get("inference_allowed_mirroring_axes"), torch.device("cpu"),
                               use_mirroring=mirroring)
    predictor.allow_tqdm = False
    return predictor, sum(p.numel() for p in network.parameters())


def raw_dataset(dataset_id: str) -> tuple[str, Path, dict]:
    """(dataset name, its nnUNet_raw folder, its dataset.json) of a dataset ID or name."""
    from nnkd.nnunet_env import find_dataset_name, require_env

    dataset = find_dataset_name(dataset_id)
    raw = require_env("nnUNet_raw")["nnUNet_raw"] / dataset
    return dataset, raw, json.loads((raw / "dataset.json").read_text())


def finished_runs(runs: list[Path], dataset: str, configuration: str, fold: str = "0") -> list[tuple[str, Path]]:
    """(run name, model folder) of every run folder in `runs` with exactly one finished `fold` (others are named on
    stderr and left out)."""
    found = []
    for folder in runs:
        for run_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
            finished = sorted(run_folder.glob(f"{dataset}/*__{configuration}/fold_{fold}/checkpoint_final.pth"))
            if len(finished) == 1:
                found.append((run_folder.name, finished[0].parent.parent))
            else:
                print(f"{run_folder.name}: left out ({len(finished)} finished fold-{fold} runs)", file=sys.stderr)
    return found


def write_outputs(out: Path, result: dict, text: str) -> None:
    """OUT/results.json and OUT/report.md; the report is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "report.md").write_text(text)
    print(text)


def determine_postprocessing(model_folder: Path, folds: list[str], work: Path) -> tuple[list, list]:
    """nnU-Net's postprocessing for a model: determined on the validation predictions of `folds` (merged as
    nnUNetv2_find_best_configuration merges a cross-validation), in `work`; returns (functions, kwargs)."""
    from nnunetv2.evaluation.accumulate_cv_results import accumulate_cv_results
    from nnunetv2.postprocessing.remove_connected_components import determine_postprocessing as determine

    from nnkd.nnunet_env import require_env

    if work.exists():
        shutil.rmtree(work)
    accumulate_cv_results(str(model_folder), str(work), [int(f) for f in folds], num_processes=1)
    gt = require_env("nnUNet_preprocessed")["nnUNet_preprocessed"] / model_folder.parent.name / "gt_segmentations"
    functions, kwargs = determine(str(work), str(gt), str(work / "plans.json"), str(work / "dataset.json"),
                                  num_processes=1, keep_postprocessed_files=False)
    return functions, kwargs


def evaluate(predictor, images, references, labels, postprocessing: tuple[list, list] | None = None) -> dict:
    """Dice per case and class (and after `postprocessing`, nnU-Net's (functions, kwargs), if given) and the
    GFLOPs counted per case."""
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing

    dice, processed, gflops = {}, {}, []
    for case, (image, properties) in images.items():
        with torch.no_grad(), FlopCounterMode(display=False, depth=0) as counter:
            segmentation = np.asarray(predictor.predict_single_npy_array(image, properties))
        gflops.append(counter.get_total_flops() / 1e9)
        dice[case] = class_dice(segmentation, references[case], labels)
        if postprocessing is not None:
            processed[case] = class_dice(apply_postprocessing(segmentation, *postprocessing), references[case], labels)
    entry = {"dice_per_case": dice, "gflops_per_case": float(np.mean(gflops))}
    if postprocessing is not None:
        entry |= {"dice_per_case_postprocessed": processed,
                  "postprocessing": [[f.__name__, k] for f, k in zip(*postprocessing)]}
    return entry


def mean_dice(entry: dict, key: str = "dice_per_case") -> float:
    """Mean over cases of the mean over the case's classes (nnU-Net's foreground mean, per case)."""
    return float(np.mean([np.mean(list(d.values())) for d in entry[key].values()]))


def class_means(entry: dict, labels, key: str = "dice_per_case") -> dict[str, float]:
    return {str(c): float(np.mean([d[str(c)] for d in entry[key].values() if str(c) in d])) for c in labels}


def report(result: dict) -> str:
    labels, names = result["labels"], result["label_names"]
    ensemble = result["teacher"]["ensemble_mirrored"]
    pp = "dice_per_case_postprocessed" in ensemble
    pp_key = "dice_per_case_postprocessed"
    lines = [f"# Students without mirroring vs the {len(result['folds'])}-fold teacher ensemble with mirroring", "",
             f"Test cases: {', '.join(result['test_cases'])} (labelsTs). Dice: mean over cases of the per-case mean "
             "over classes; GFLOPs: counted over the whole prediction of a case (every patch, fold and flip)."
             + (" Postprocessed: after nnU-Net's connected-component postprocessing, determined on each model's "
                "validation predictions (the ensemble: its folds' cross-validation)." if pp else ""), "",
             "| model | params | mirroring | Dice | " + " | ".join(names) + " | Δ vs ensemble (points) | GFLOPs / case "
             "| × less compute than the ensemble |" + (" Dice, postprocessed | Δ vs ensemble, both postprocessed |"
                                                       if pp else ""),
             "|---|---|---|---|" + "---|" * len(labels) + "---|---|---|" + ("---|---|" if pp else "")]

    def row(name, entry, params, mirroring):
        cls = class_means(entry, labels)
        delta = 100 * (mean_dice(entry) - mean_dice(ensemble))
        ratio = ensemble["gflops_per_case"] / entry["gflops_per_case"]
        line = (f"| {name} | {params / 1e6:.3f} M | {mirroring} | {mean_dice(entry):.4f} | "
                + " | ".join(f"{cls[str(c)]:.4f}" for c in labels)
                + f" | {delta:+.2f} | {entry['gflops_per_case']:.2f} | {ratio:.0f} |")
        if pp:
            line += (f" {mean_dice(entry, pp_key):.4f} | "
                     f"{100 * (mean_dice(entry, pp_key) - mean_dice(ensemble, pp_key)):+.2f} |")
        lines.append(line)

    t = result["teacher"]
    row(f"teacher, folds {'+'.join(result['folds'])}", ensemble, t["params"], "on")
    row("teacher, fold 0", t["fold0_mirrored"], t["params"], "on")
    row("teacher, fold 0", t["fold0_plain"], t["params"], "off")
    for run in result["students"]:
        row(run["run"], run, run["params"], "off")
    keys = [("dice_per_case", "")] + ([(pp_key, ", postprocessed")] if pp else [])
    for key, suffix in keys:
        groups = defaultdict(list)
        for run in result["students"]:
            groups[run["group"]].append(mean_dice(run, key))
        lines += ["", f"| students (fold 0, no mirroring){suffix} | seeds | Dice, mean ± std "
                      f"| Δ vs ensemble{suffix}, per seed (points) |", "|---|---|---|---|"]
        for group, values in groups.items():
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            deltas = ", ".join(f"{100 * (v - mean_dice(ensemble, key)):+.2f}" for v in values)
            lines.append(f"| {group} | {len(values)} | {np.mean(values):.4f} ± {std:.4f} | {deltas} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's model folder")
    parser.add_argument("--folds", nargs="+", default=["0", "1", "2", "3", "4"])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="folders of student runs")
    parser.add_argument("-d", default="990", help="dataset ID or name (its imagesTs and labelsTs)")
    parser.add_argument("-c", default="3d_fullres", help="configuration")
    parser.add_argument("--postprocessing", action="store_true",
                        help="also score after nnU-Net's postprocessing, determined on each model's validation")
    parser.add_argument("-o", type=Path, required=True)
    args = parser.parse_args()

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnkd.benchmark.runs import Run
    from nnkd.records import software_versions

    torch.set_num_threads(1)
    dataset, raw, dataset_json = raw_dataset(args.d)
    label_names = {int(v): k for k, v in dataset_json["labels"].items() if isinstance(v, int) and int(v) > 0}
    labels = sorted(label_names)
    io = SimpleITKIO()
    ending = dataset_json["file_ending"]
    cases = sorted(p.name[: -len("_0000" + ending)] for p in (raw / "imagesTs").glob(f"*_0000{ending}"))
    images = {c: io.read_images([str(raw / "imagesTs" / f"{c}_0000{ending}")]) for c in cases}
    references = {c: io.read_seg(str(raw / "labelsTs" / f"{c}{ending}"))[0][0] for c in cases}

    result = {"settings": {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in vars(args).items()},
              "versions": software_versions(), "dataset": dataset, "test_cases": cases, "folds": args.folds,
              "labels": labels, "label_names": [label_names[c] for c in labels], "teacher": {}, "students": []}
    work, determined = args.o / "postprocessing", {}

    def postprocessing(model_folder, folds, name):
        if args.postprocessing and name not in determined:
            determined[name] = determine_postprocessing(model_folder, folds, work / name)
        return determined.get(name)

    for key, folds, mirroring in (("ensemble_mirrored", args.folds, True), ("fold0_mirrored", ["0"], True),
                                  ("fold0_plain", ["0"], False)):
        predictor, params = predictor_for(args.teacher, folds, args.c, mirroring)
        result["teacher"][key] = evaluate(predictor, images, references, labels,
                                          postprocessing(args.teacher, folds, f"teacher_{'_'.join(folds)}"))
        result["teacher"]["params"] = params
        print(f"teacher {key}: Dice {mean_dice(result['teacher'][key]):.4f}, "
              f"{result['teacher'][key]['gflops_per_case']:.1f} GFLOPs/case", file=sys.stderr)
    for run_name, model_folder in finished_runs(args.runs, dataset, args.c):
        run = Run.from_name(run_name)
        predictor, params = predictor_for(model_folder, ["0"], args.c, mirroring=False)
        entry = evaluate(predictor, images, references, labels, postprocessing(model_folder, ["0"], run_name))
        entry |= {"run": run_name, "group": f"{run.budget} {run.label}", "seed": run.seed, "params": params,
                  "folder": str(model_folder.parent.parent)}
        result["students"].append(entry)
        print(f"{run_name}: Dice {mean_dice(entry):.4f}, {entry['gflops_per_case']:.2f} GFLOPs/case", file=sys.stderr)
    write_outputs(args.o, result, report(result))


if __name__ == "__main__":
    main()
