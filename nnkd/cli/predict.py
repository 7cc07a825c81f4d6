"""nnkd_predict: segment a folder of images with a trained student, as nnUNetv2_predict does."""

from nnkd.cli._common import ArgumentParser, add_step_size, add_verbose, check_step_size, count_value, run


def add_student_arguments(p: ArgumentParser) -> None:
    """Which trained student: dataset, configuration, folds, plans and method (shared with nnkd_export)."""
    p.add_argument("-d", required=True, metavar="DATASET", help="dataset ID or name")
    p.add_argument("-c", required=True, metavar="CONFIG", help="configuration, e.g. 3d_fullres")
    p.add_argument("-f", nargs="+", default=None, metavar="FOLD",
                   help="folds to use (several are ensembled); default: every trained fold")
    p.add_argument("--budget", default=None, help="student plans nnKDPlans_<budget>")
    p.add_argument("--teacher-plans", default="nnUNetPlans", help="teacher plans the student was planned from")
    p.add_argument("-p", dest="plans", default=None, help="name the student plans directly instead of --budget")
    p.add_argument("--method", default=None, help="method the student was trained with; may be omitted when "
                                                  "exactly one trained student matches")
    p.add_argument("-tr", dest="trainer", default=None, help="trainer class name instead of --method")
    p.add_argument("--run-name", default=None, metavar="NAME",
                   help="the run (the part after '@' in the run folder's name); needed when several runs match")
    p.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    p.add_argument("--task", default=None, metavar="DATASET",
                   help="LoRKD students (--method lorkd, -d the run's first dataset): the task whose expert to use, "
                        "by dataset ID or name; nnkd_export also takes all (one model folder per task)")


def student_from_args(args):
    from nnkd.inference.students import StudentRef

    return StudentRef(dataset=args.d, configuration=args.c, folds=args.f, budget=args.budget, plans=args.plans,
                      teacher_plans=args.teacher_plans, method=args.method, trainer=args.trainer,
                      checkpoint=args.checkpoint, task=args.task, run_name=args.run_name)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nnkd_predict",
                       description="Predict with a trained student through nnU-Net's nnUNetPredictor (the teacher "
                                   "is never loaded); writes what nnUNetv2_predict writes.")
    p.add_argument("-i", required=True, metavar="IN", help="folder of images named CASE_XXXX.nii.gz")
    p.add_argument("-o", required=True, metavar="OUT", help="output folder (not the input folder)")
    add_student_arguments(p)
    p.add_argument("--onnx", default=None, metavar="FILE",
                   help="run the sliding window through ONNX Runtime with this exported student.onnx")
    p.add_argument("-device", "--device", dest="device", default=None, choices=("cpu", "cuda", "mps"),
                   help="default: cuda if available, else cpu")
    add_step_size(p, "the prediction")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--save_probabilities", action="store_true", help="also write .npz probabilities and .pkl")
    p.add_argument("--continue_prediction", action="store_true", help="skip cases already predicted")
    p.add_argument("--profile", action="store_true",
                   help="predict case by case and time each step (read, preprocess, network, resample, write); "
                        "prints the median split and writes OUT/profile.json")
    p.add_argument("--bf16", action="store_true",
                   help="CPU: run the network under bf16 autocast, on CPUs with AVX512-BF16 or AMX-BF16 (labels may "
                        "differ from float32's on a few voxels; docs/deploy.md); refused on other CPUs")
    p.add_argument("--stock", action="store_true",
                   help="CPU: run the stock torch network instead of the fast path (the fastest of torch, torch "
                        "oneDNN, channels-last and ONNX Runtime, each checked against the stock network; "
                        "docs/deploy.md)")
    p.add_argument("-npp", type=count_value, default=3, help="processes for preprocessing (default 3)")
    p.add_argument("-nps", type=count_value, default=3, help="processes for segmentation export (default 3)")
    add_verbose(p)
    return p


def _predict(args) -> None:
    from pathlib import Path

    from nnkd.inference.predict import PredictRequest, predict

    check_step_size(args.step_size, "-step_size")
    predict(PredictRequest(
        input_folder=Path(args.i), output_folder=Path(args.o), student=student_from_args(args),
        onnx=Path(args.onnx) if args.onnx else None,
        device=args.device, step_size=args.step_size, disable_tta=args.disable_tta,
        save_probabilities=args.save_probabilities, continue_prediction=args.continue_prediction, profile=args.profile,
        num_processes_preprocessing=args.npp, num_processes_export=args.nps, bf16=args.bf16,
        fast=not args.stock))


def main(argv=None) -> None:
    run(_predict, build_parser(), argv)


if __name__ == "__main__":
    main()
