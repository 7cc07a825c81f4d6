"""The synthetic study: nnU-Net's default network trained as the teacher, then nnkd_benchmark twice.

    python benchmarks/synthetic_study.py -o study_synthetic [-d 990] [--cases 24] [--shape 32 48 48]
        [--teacher-epochs 48] [--teacher-iterations 20] [--epochs 40] [--low-label-epochs 40]
        [--iterations 20] [--val-iterations 4] [--seeds 3] [--labeled 4]
        [--all-label-methods none,logit,feature,cka,drd] [--low-label-methods 'none,logit,tskd?feature_weight=0']
        [--budgets tiny,small] [-np 2] [--jobs 1] [--device cpu|cuda] [--teacher-only]

1. Dataset: nnkd_make_synthetic's (multi-class: organ, lesion, vessel; --cases training + 4 test cases of
   about --shape voxels), unless `$nnUNet_raw` has that ID already.
2. Plans: as `nnkd_plan_and_preprocess --budget tiny` (nnU-Net's default plans, preprocessed, and a student),
   unless planned.
3. Teacher: nnU-Net's default 3d_fullres network (`-p nnUNetPlans`) trained by nnU-Net's loop without
   distillation (`nnkd_train --method none --seed 0`) for --teacher-epochs × --teacher-iterations on fold 0,
   into `$nnUNet_results/<dataset>/nnKDTrainer_NoKD@s0__nnUNetPlans__3d_fullres` (nnkd's run name of a seeded
   run); skipped when its checkpoint_final.pth exists, continued when it stopped. --teacher-only stops here.
4. Low-label regime: nnkd_benchmark (in this process) `--labeled N --methods <--low-label-methods> --budgets tiny` into
   OUT/labeled<N>: every run keeps N labelled training cases; tskd also distils on the fold's other training
   images (their labels unread), which is what a teacher trained elsewhere offers a student with few labels.
5. All labels: `nnkd_benchmark --methods <--all-label-methods> --budgets <--budgets>` into OUT/all_labels.

Every student run has the same schedule, --epochs × --iterations (the low-label runs --low-label-epochs),
with --val-iterations validation batches per epoch for the learning curves, and is repeated with --seeds
seeds; logit KD, and TS-KD without its feature term, run from the cached teacher only (`--cached-only`: each
costs about a plain step; TS-KD's transfer set, the fold's unlabelled rest, is in the same cache). A method
may carry hyper-parameters (`'logit?kd_loss=kl&kd_temperature=3'`) to compare settings.

Every step skips what is finished, so a rerun resumes. Each benchmark writes results.json, report.md and plots.
"""

import argparse
import os
from pathlib import Path

from nnkd.benchmark.runs import train_study_teacher
from nnkd.benchmark.study import BenchmarkRequest, run_benchmark, study_dataset
from nnkd.datasets.synthetic import SyntheticSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("-o", required=True, type=Path, help="output folder of both benchmarks")
    parser.add_argument("-d", type=int, default=990, help="dataset ID (default 990)")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 48, 48), metavar=("Z", "Y", "X"))
    parser.add_argument("--teacher-epochs", type=int, default=48)
    parser.add_argument("--teacher-iterations", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=40, help="epochs of each run of the all-label study")
    parser.add_argument("--low-label-epochs", type=int, default=40, help="epochs of each run of the low-label study")
    parser.add_argument("--iterations", type=int, default=20, help="iterations per epoch of each student run")
    parser.add_argument("--val-iterations", type=int, default=4, help="validation batches per epoch (learning curves)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per run")
    parser.add_argument("--labeled", type=int, default=4, help="labelled training cases of the low-label study")
    parser.add_argument("--all-label-methods", default="none,logit,feature,cka,drd")
    parser.add_argument("--low-label-methods", default="none,logit,tskd?feature_weight=0")
    parser.add_argument("--budgets", default="tiny,small", help="budgets of the all-label study")
    parser.add_argument("-np", type=int, default=2, help="processes for preprocessing and augmentation")
    parser.add_argument("--jobs", type=int, default=1, help="runs each benchmark trains at once (its --jobs)")
    parser.add_argument("--device", default="cpu", help="training device (the benchmark measures latency on it)")
    parser.add_argument("--teacher-only", action="store_true", help="stop after training the teacher")
    args = parser.parse_args()

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if name not in os.environ:
            parser.error(f"set {name} (nnU-Net's folders) first")
    os.environ.setdefault("nnUNet_n_proc_DA", str(args.np))  # the teacher's and every student's augmentation
    spec = SyntheticSpec(dataset_id=args.d, cases=args.cases, test_cases=4, shape=tuple(args.shape))
    dataset = study_dataset(spec, "3d_fullres", args.np, args.o, "synthetic_study")
    schedule = {"num_epochs": args.teacher_epochs, "num_iterations_per_epoch": args.teacher_iterations,
                "num_val_iterations_per_epoch": 2}
    teacher = train_study_teacher(dataset, "3d_fullres", schedule, args.device, dict(os.environ),
                                  args.o / "logs" / "teacher.log")
    print(f"teacher: {teacher}")
    if args.teacher_only:
        return

    studies = {f"labeled{args.labeled}": dict(labeled=args.labeled, methods=args.low_label_methods, budgets="tiny",
                                              num_epochs=args.low_label_epochs),
               "all_labels": dict(methods=args.all_label_methods, budgets=args.budgets, num_epochs=args.epochs)}
    for name, options in studies.items():
        print(f"benchmark {name} → {args.o / name}")
        run_benchmark(BenchmarkRequest(
            output=args.o / name, dataset=str(args.d), configuration="3d_fullres", teacher=f"nnunet:{teacher}",
            **options | {k: tuple(options[k].split(",")) for k in ("methods", "budgets")},
            num_iterations_per_epoch=args.iterations, num_val_iterations_per_epoch=args.val_iterations,
            seeds=args.seeds, cached_only=True, num_processes=args.np, jobs=args.jobs, device=args.device))
        print((args.o / name / "report.md").read_text())


if __name__ == "__main__":
    main()
