"""nnkd_train_lorkd: one budget student for several datasets, a low-rank expert and heads per task (LoRKD)."""

from nnkd.cli._common import ArgumentParser, add_deprecated, add_schedule_arguments, add_verbose, run, schedule_of
from nnkd.errors import NnkdError


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nnkd_train_lorkd",
                       description="Train one student for several datasets (tasks) with nnU-Net's pipeline: shared "
                                   "convolutions plus a low-rank expert and segmentation heads per task, mixed-task "
                                   "batches, optional KD from a teacher per task (LoRKD). Plan the tasks together "
                                   "first (nnkd_plan_and_preprocess -d A B C --plans-from A). Output: "
                                   "$nnUNet_results/<first dataset>/nnKDTrainer_LoRKD__nnKDPlans_<budget>__<config>/"
                                   "fold_X; details in docs/lorkd.md")
    p.add_argument("-d", nargs="+", required=True, metavar="DATASET",
                   help="the tasks' dataset IDs or names; the first names the run's folder")
    p.add_argument("-c", dest="configuration", required=True, metavar="CONFIG", help="configuration, e.g. 3d_fullres")
    p.add_argument("-f", dest="fold", required=True, metavar="FOLD", help="0-4 or all")
    p.add_argument("--budget", default=None, help="student plans nnKDPlans_<budget> (tiny, small, medium, …)")
    p.add_argument("--teacher-plans", default="nnUNetPlans",
                   help="teacher plans the student was planned from (default nnUNetPlans)")
    p.add_argument("-p", dest="plans", default=None, help="name the student plans directly instead of --budget")
    p.add_argument("--teacher", action="append", default=[], metavar="DATASET=SPEC",
                   help="a teacher for one task (repeatable, at most one per task; tasks without one learn from "
                        "their labels only), e.g. 991=nnunet:$nnUNet_results/Dataset991_X/"
                        "nnUNetTrainer__nnUNetPlans__3d_fullres")
    p.add_argument("--lora-rank", dest="rank", type=int, default=None, help="rank r of each task's experts (default 4)")
    p.add_argument("--lora-alpha", dest="alpha", type=float, default=None,
                   help="expert scale α; experts add (α/r)·B·A (default 16)")
    add_deprecated(p, "--rank", "--lora-rank", "rank", type=int)
    add_deprecated(p, "--alpha", "--lora-alpha", "alpha", type=float)
    add_schedule_arguments(p)
    p.add_argument("--c", dest="continue_training", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--npz", action="store_true", help="also save validation softmax outputs")
    add_verbose(p)
    return p


def _teachers(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    """(dataset, spec) of each --teacher DATASET=SPEC (a spec may hold '=' in its options)."""
    teachers = []
    for pair in pairs:
        dataset, sep, spec = pair.partition("=")
        if not sep or not dataset.strip() or not spec.strip():
            raise NnkdError(f"--teacher {pair} is not DATASET=SPEC", "e.g. --teacher 991=nnunet:/path/to/model_folder")
        teachers.append((dataset.strip(), spec.strip()))
    return tuple(teachers)


def _train(args) -> None:
    from nnkd.run.lorkd import LoRKDRequest, train_lorkd

    schedule = schedule_of(args)
    if args.rank is not None and args.rank < 1:
        raise NnkdError(f"--lora-rank {args.rank} must be at least 1", "give a positive --lora-rank")
    if args.alpha is not None and not args.alpha > 0:
        raise NnkdError(f"--lora-alpha {args.alpha} must be positive", "give a scale like 16")
    train_lorkd(LoRKDRequest(
        datasets=tuple(args.d), configuration=args.configuration, fold=args.fold, budget=args.budget, plans=args.plans,
        teacher_plans=args.teacher_plans, teachers=_teachers(args.teacher), rank=args.rank, alpha=args.alpha,
        **schedule, device=args.device,
        continue_training=args.continue_training, npz=args.npz))


def main(argv=None) -> None:
    run(_train, build_parser(), argv)


if __name__ == "__main__":
    main()
