"""nnkd_distill: plan, cache the teacher, train, validate and export a student for every fold, in one command."""

import argparse
import textwrap

from nnkd.cli._common import (ArgumentParser, add_budget_arguments, add_schedule_arguments, add_step_size, add_verbose,
                              budget_of, check_step_size, count_value, run, schedule_of, seed_value)
from nnkd.cli.train import hyperparameters_of
from nnkd.errors import NnkdError
from nnkd.method_table import DEFAULT_METHOD, METHOD_TABLE


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="nnkd_distill",
        description=textwrap.fill(
            "From a trained teacher to an exported student: for each fold, plan the student (if not done), cache "
            "the teacher's predictions once (cached logit KD: a training step costs about a plain one), train and "
            "validate the student with nnU-Net's pipeline, then export every fold as one stock nnU-Net model folder "
            "OUT and print teacher vs student (validation Dice per fold, parameters, GFLOPs, seconds per case). "
            "Rerun the same command to resume after an interruption: every step skips what is done.", 100),
        epilog="example:\n  nnkd_distill -d 990 --teacher nnunet:$nnUNet_results/Dataset990_Synthetic/"
               "nnUNetTrainer__nnUNetPlans__3d_fullres -o student_990",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", required=True, metavar="DATASET", help="dataset ID or name")
    p.add_argument("--teacher", required=True, metavar="SPEC",
                   help="teacher spec, e.g. nnunet:MODEL_FOLDER (its trained folds are the default -f), deepbet "
                        "(families: nnkd_teachers)")
    p.add_argument("-o", required=True, metavar="OUT",
                   help="the stock nnU-Net model folder to write (with distill.json, the table); a rerun replaces "
                        "only its own output")
    p.add_argument("-c", default="3d_fullres", metavar="CONFIG", help="configuration (default 3d_fullres)")
    p.add_argument("-f", nargs="+", default=None, metavar="FOLD",
                   help="folds (0-4 or all); default: the nnunet: teacher's trained folds, else 0 1 2 3 4")
    add_budget_arguments(p, "student budget (default --budget tiny)")
    search = p.add_argument_group("or search the budget: the smallest student that keeps the teacher's accuracy")
    search.add_argument("--max-dice-loss", type=float, default=None, metavar="D",
                        help="instead of a budget: train a ladder of candidate students from one teacher cache "
                             "(successive halving on their learning curves) and keep the smallest whose validation "
                             "Dice on the first fold is within D points of the teacher's; then distil every fold "
                             "with it. OUT/distill.json's 'search' lists every candidate")
    search.add_argument("--objective", default="params", choices=("params", "gflops", "latency"),
                        help="what 'smallest' means: parameters (default), GFLOPs per patch, or patch latency "
                             "measured on this machine")
    search.add_argument("--ladder", default=None, metavar="1/N,…",
                        help="the candidates as fractions of the teacher (default 1/4,1/8,…,1/256)")
    p.add_argument("--teacher-plans", default="nnUNetPlans",
                   help="the dataset's teacher plans the student pairs with (default nnUNetPlans)")
    p.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"distillation method (default {DEFAULT_METHOD}): {', '.join(m for m, r in METHOD_TABLE.items() if r.one_step)}"
                        f" ({', '.join(m for m, r in METHOD_TABLE.items() if not r.one_step)} and lorkd: nnkd_train / "
                        "nnkd_train_lorkd)")
    p.add_argument("--online", action="store_true",
                   help="run the teacher in every training step instead of caching its predictions once (feature "
                        "methods are always online)")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="method hyper-parameter (repeatable)")
    p.add_argument("--seed", type=seed_value, default=None, metavar="N", help="seed of every fold's training")
    p.add_argument("--run-name", default=None, metavar="NAME",
                   help="name of the training runs (default: derived from teacher and settings, as nnkd_train does)")
    add_schedule_arguments(p)
    add_step_size(p, "the teacher cache")
    p.add_argument("--zip", action="store_true", help="also write OUT.zip for nnUNetv2_install_pretrained_model_from_zip")
    p.add_argument("--onnx", action="store_true", help="also write student.onnx per fold")
    p.add_argument("--test", action="store_true",
                   help="also predict the raw dataset's imagesTs with the student and the teacher (the distilled "
                        "folds, as nnUNetv2_predict) and report both Dice against labelsTs")
    p.add_argument("--no-timing", action="store_true",
                   help="skip timing teacher and student on the first fold's validation cases")
    p.add_argument("-np", type=count_value, default=None, metavar="N", help="processes for planning and preprocessing")
    add_verbose(p)
    return p


def _distill(args) -> None:
    from pathlib import Path

    from nnkd.pipeline.distill import DistillRequest, distill

    from nnkd.pipeline.search import parse_ladder

    explicit = args.budget or args.max_params or args.max_gflops or args.max_latency
    if args.max_dice_loss is not None and explicit:
        raise NnkdError("--max-dice-loss searches the budget, and a budget was given too",
                        "drop --budget/--max-params/--max-gflops/--max-latency, or drop --max-dice-loss")
    if args.max_dice_loss is None and (args.ladder or args.objective != "params"):
        raise NnkdError("--ladder and --objective choose the candidates of --max-dice-loss", "add --max-dice-loss D")
    budget = budget_of(args, default_preset="tiny")
    distill(DistillRequest(
        dataset=args.d, teacher=args.teacher, output=Path(args.o), configuration=args.c, folds=tuple(args.f or ()),
        budget=budget, teacher_plans=args.teacher_plans, method=args.method, online=args.online,
        hyperparameters=hyperparameters_of(args.hp), seed=args.seed, run_name=args.run_name, **schedule_of(args),
        device=args.device, step_size=check_step_size(args.step_size, "-step_size"), zip=args.zip, onnx=args.onnx,
        timing=not args.no_timing, test=args.test, num_processes=args.np, max_dice_loss=args.max_dice_loss,
        objective=args.objective, ladder=parse_ladder(args.ladder) if args.ladder else ()))


def main(argv=None) -> None:
    run(_distill, build_parser(), argv)


if __name__ == "__main__":
    main()
