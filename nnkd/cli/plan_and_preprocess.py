"""nnkd_plan_and_preprocess: nnU-Net's fingerprint, plans and preprocessing, plus budget student plans."""

from nnkd.cli._common import ArgumentParser, add_budget_arguments, add_verbose, budget_of, count_value, run
from nnkd.nnunet_env import find_dataset_name, require_env


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="nnkd_plan_and_preprocess",
        description="Run nnU-Net's fingerprinting, planning and preprocessing (skipping what is done) and write "
                    "nnKDPlans_<budget>.json: the teacher plans with a student architecture sized to the budget. "
                    "With --plans-from, the datasets get another dataset's plans instead (one student for several "
                    "datasets: nnkd_train_lorkd).")
    p.add_argument("-d", nargs="+", required=True, metavar="DATASET",
                   help="dataset IDs or names, e.g. 990 (several are planned one after the other)")
    p.add_argument("--plans-from", default=None, metavar="DATASET",
                   help="give the -d datasets this dataset's teacher and student plans (nnU-Net's plan transfer, as "
                        "nnUNetv2_move_plans_between_datasets: same spacing, patch size, normalization and "
                        "architecture), then extract their fingerprints and preprocess them; it is planned first "
                        "if it is among -d. The datasets need the same input channels")
    p.add_argument("-c", nargs="+", default=None, metavar="CONFIG",
                   help="configurations to preprocess (default: 3d_fullres and 2d where planned); "
                        "the student is planned for every configuration of the teacher plans")
    add_budget_arguments(p, "budget (a preset, or absolute limits)")
    p.add_argument("--teacher-plans", default="nnUNetPlans",
                   help="the teacher plans the student pairs with (default nnUNetPlans; ResEnc plans such as "
                        "nnUNetResEncUNetMPlans work too)")
    p.add_argument("-np", type=count_value, default=None, metavar="N",
                   help="processes for fingerprinting and preprocessing (default: nnU-Net's)")
    p.add_argument("--verify_dataset_integrity", action="store_true", help="run nnU-Net's dataset check first")
    p.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    add_verbose(p)
    return p


def _plan(args) -> None:
    from nnkd.pipeline.distill import check_budget_shrinks
    from nnkd.planners.plan_and_preprocess import plan_and_preprocess, plan_from

    budget = budget_of(args)
    if args.np is None:
        from nnunetv2.configuration import default_num_processes
        args.np = default_num_processes
    options = dict(configurations=args.c, teacher_plans=args.teacher_plans, num_processes=args.np,
                   verify_integrity=args.verify_dataset_integrity, preprocess=not args.no_pp)
    if args.plans_from is not None:
        plan_from(args.plans_from, args.d, budget, **options)
        return
    require_env("nnUNet_raw", "nnUNet_preprocessed")
    datasets = [find_dataset_name(d) for d in args.d]  # every ID checked before the first is planned
    for dataset in datasets:
        check_budget_shrinks(dataset, budget, args.teacher_plans, args.c)
    for dataset in datasets:
        plan_and_preprocess(dataset, budget, **options)


def main(argv=None) -> None:
    run(_plan, build_parser(), argv)


if __name__ == "__main__":
    main()
