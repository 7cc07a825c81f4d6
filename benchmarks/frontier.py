"""The accuracy–size frontier against a converged teacher, as one resumable command.

    python benchmarks/frontier.py -o OUT -d 980 --preset multiorgan --dim 2 --shape 128 128 -c 2d
        [--cases 50] [--test-cases 12] [--name Synthetic] [--teacher-epochs 120] [--iterations 50]
        [--val-iterations 4]
        [--budgets 1/4,1/16,1/64,1/256] [--methods none,logit] [--seeds 3] [--jobs 1] [--device cpu|cuda]
        [--allow-unconverged] [--teacher-only]

1. Dataset: nnkd_make_synthetic's dataset (`-d ID --preset P --dim D --shape … --name N`) unless `$nnUNet_raw` has
   that ID (an existing dataset, e.g. 990, is used as it is), planned unless it is: nnU-Net's default plans, which
   the teacher trains on, and the tiny student (`nnkd_plan_and_preprocess --budget tiny`).
2. Teacher: nnU-Net's default plans for -c (`-p nnUNetPlans`), trained without distillation by nnU-Net's loop
   (`nnkd_train --method none --seed 0`) for --teacher-epochs × --iterations on fold 0 into
   `$nnUNet_results/<dataset>/nnKDTrainer_NoKD@s0__nnUNetPlans__<c>`; continued when it stopped.
3. Convergence: the teacher's EMA pseudo Dice must gain < --plateau-gain points over the last
   --plateau-share of its epochs (nnkd.evaluation.convergence); otherwise the study stops (train the teacher
   longer) unless --allow-unconverged. Its curve is drawn to OUT/teacher_curve.png and the verdict, schedule and
   nnU-Net's validation Dice written to OUT/teacher.json (--teacher-only stops there).
4. Students: nnkd_benchmark (in this process) `--budgets params<P/N>,… --methods <methods> --cached-only`, one
   budget per --budgets fraction 1/N of the teacher's parameters (an absolute --max-params limit each: GFLOPs are left
   free, so the smallest fractions stay plannable; the plots show both axes), with the teacher's own schedule (--teacher-epochs × --iterations: the same number of iterations), --seeds seeds,
   into OUT/benchmark; logit-only methods learn from the cached teacher.
5. OUT/results.json (teacher: spec, iterations, Dice, plateau; one record per run: budget, method, seed, Dice;
   the frontier answers), OUT/report.md and the plots frontier_params.png / frontier_gflops.png.

Every step skips what is finished, so a rerun resumes; a rerun with more --seeds adds seeds.
"""

import argparse
import json
import os
import platform
from pathlib import Path

from nnkd.atomic import write_json_atomic
from nnkd.devices import cpu_identity
from nnkd.evaluation.convergence import PLATEAU_GAIN, PLATEAU_SHARE, plateau, training_curve
from nnkd.benchmark.frontier import frontier, plot_teacher_curve, write_frontier
from nnkd.benchmark.runs import TEACHER_SEED, train_study_teacher
from nnkd.benchmark.study import BenchmarkRequest, run_benchmark, study_dataset
from nnkd.datasets.synthetic import SyntheticSpec
from nnkd.planners.budget import Budget
from nnkd.planners.student_planner import STUDENT_KEY
from nnkd.plans import PreprocessedConfiguration
from nnkd.run.common import validation_dice


def teacher_record(args, folder: Path, benchmark: dict) -> dict:
    """The teacher's spec, schedule, convergence and Dice (measured by the benchmark on the validation cases)."""
    curve = training_curve(folder / "fold_0")
    judged = plateau(curve["ema_fg_dice"], args.plateau_share, args.plateau_gain).to_json()
    record = json.loads((folder / "fold_0" / "teacher.json").read_text())
    measured = benchmark["teacher"]
    return {"spec": f"nnunet:{folder}", "plans": "nnUNetPlans", "configuration": args.c, "seed": record.get("seed"),
            "epochs": args.teacher_epochs, "iterations_per_epoch": args.iterations,
            "iterations": len(curve["ema_fg_dice"]) * args.iterations, "parameters": measured.get("parameters"),
            "gflops_per_patch": measured.get("gflops_per_patch"), "dice": measured["dice"],
            "dice_per_class": measured.get("dice_per_class"), "plateau": judged, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("-o", required=True, type=Path, help="the study's output folder")
    parser.add_argument("-d", type=int, default=980, help="dataset ID (default 980)")
    parser.add_argument("-c", default="2d", help="configuration (default 2d)")
    parser.add_argument("--preset", default="multiorgan", help="nnkd_make_synthetic --preset, when it makes the data")
    parser.add_argument("--dim", type=int, default=2, help="nnkd_make_synthetic --dim")
    parser.add_argument("--shape", type=int, nargs="+", default=(128, 128), help="nnkd_make_synthetic --shape")
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--test-cases", type=int, default=12)
    parser.add_argument("--name", default="Synthetic", help="nnkd_make_synthetic --name, when it makes the data")
    parser.add_argument("--teacher-epochs", type=int, default=120, help="teacher epochs; students get as many")
    parser.add_argument("--iterations", type=int, default=50, help="iterations per epoch (teacher and students)")
    parser.add_argument("--val-iterations", type=int, default=4, help="validation batches per epoch (curves)")
    parser.add_argument("--budgets", default="1/4,1/16,1/64,1/256",
                        help="fractions 1/N of the teacher's parameters (default 1/4,1/16,1/64,1/256)")
    parser.add_argument("--methods", default="none,logit", help="nnkd_benchmark --methods")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plateau-share", type=float, default=PLATEAU_SHARE)
    parser.add_argument("--plateau-gain", type=float, default=PLATEAU_GAIN, help="as a Dice fraction (0.002 = 0.2 points)")
    parser.add_argument("--allow-unconverged", action="store_true", help="go on when the teacher misses the criterion")
    parser.add_argument("-np", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--teacher-only", action="store_true",
                        help="train (or reuse) the teacher, write OUT/teacher.json and its curve with the plateau "
                             "verdict, and stop: no planning, no students")
    args = parser.parse_args()

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if name not in os.environ:
            parser.error(f"set {name} (nnU-Net's folders) first")
    fractions = [Budget.from_name(b).to_json()["fraction_of_teacher"] for b in args.budgets.split(",") if b]
    if None in fractions:
        parser.error(f"--budgets {args.budgets}: give fractions 1/N of the teacher's parameters")
    os.environ.setdefault("nnUNet_n_proc_DA", str(args.np))  # the teacher's and every student's augmentation
    spec = SyntheticSpec(dataset_id=args.d, cases=args.cases, dim=args.dim, shape=tuple(args.shape), name=args.name,
                         test_cases=args.test_cases, preset=args.preset)
    dataset = study_dataset(spec, args.c, args.np, args.o, "frontier")
    schedule = {"num_epochs": args.teacher_epochs, "num_iterations_per_epoch": args.iterations,
                "num_val_iterations_per_epoch": args.val_iterations}
    folder = train_study_teacher(dataset, args.c, schedule, args.device, dict(os.environ),
                                 args.o / "logs" / "teacher.log")
    curve = training_curve(folder / "fold_0")
    judged = plateau(curve["ema_fg_dice"], args.plateau_share, args.plateau_gain)
    args.o.mkdir(parents=True, exist_ok=True)
    plot_teacher_curve(curve, judged.to_json(), args.iterations, args.o / "teacher_curve.png")
    write_json_atomic(args.o / "teacher.json", {  # the verdict, before any student is trained
        "spec": f"nnunet:{folder}", "plans": "nnUNetPlans", "configuration": args.c, "seed": TEACHER_SEED,
        "epochs": args.teacher_epochs, "iterations_per_epoch": args.iterations,
        "iterations": len(curve["ema_fg_dice"]) * args.iterations,
        "validation_dice": validation_dice(folder / "fold_0"),  # nnU-Net's own validation of fold 0
        "machine": cpu_identity().get("cpu") or platform.machine(), "plateau": judged.to_json(), "curve": curve})
    print(f"teacher: {folder}; {judged.criterion}: gain {100 * judged.gain:.2f} points → "
          f"{'converged' if judged.converged else 'not converged'}")
    if args.teacher_only:
        return
    if not judged.converged and not args.allow_unconverged:
        raise SystemExit("frontier: error: the teacher has not converged by the criterion; train it longer "
                         "(a larger --teacher-epochs in a new -o and $nnUNet_results) or pass --allow-unconverged")

    tiny = PreprocessedConfiguration.load(dataset, "nnKDPlans_tiny", args.c).plans["configurations"][args.c]
    teacher_params = tiny[STUDENT_KEY]["teacher_params"]
    budgets = {f"params{int(teacher_params * f)}": f for f in fractions}
    results = run_benchmark(BenchmarkRequest(
        output=args.o / "benchmark", dataset=str(args.d), configuration=args.c, teacher=f"nnunet:{folder}",
        methods=tuple(args.methods.split(",")), budgets=tuple(budgets), **schedule, seeds=args.seeds,
        cached_only=True, onnx=False, num_processes=args.np, jobs=args.jobs, device=args.device))
    teacher = teacher_record(args, folder, results)
    runs = [{"budget": r["budget"], "fraction_of_teacher_params": budgets.get(r["budget"]), "method": r["method"],
             "label": r["label"], "cached": r["cached"], "seed": r["seed"], "dice": r["dice"],
             "dice_per_class": r["dice_per_class"], "parameters": r.get("parameters"),
             "gflops_per_patch": r.get("gflops_per_patch"), "seconds_per_iteration": r.get("seconds_per_iteration")}
            for r in results["runs"]]
    study = {"dataset": results["dataset"], "configuration": args.c, "fold": results["fold"],
             "machine": f"{cpu_identity()['cpu'] or platform.machine()}; {results['machine']}",
             "validation_cases": results["validation_cases"], "labels": results["labels"], "seeds": args.seeds,
             "teacher": teacher,
             "students_schedule": {"epochs": args.teacher_epochs, "iterations_per_epoch": args.iterations,
                                   "iterations": args.teacher_epochs * args.iterations,
                                   "val_iterations_per_epoch": args.val_iterations},
             "budget_fractions": budgets, "runs": runs, "frontier": frontier(results, teacher)}
    write_frontier(study, args.o)
    print((args.o / "report.md").read_text())


if __name__ == "__main__":
    main()
