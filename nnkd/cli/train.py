"""nnkd_train: train a budget student with nnU-Net's pipeline plus distillation from a teacher."""

import argparse
import textwrap

from nnkd.cli._common import ArgumentParser, add_schedule_arguments, add_verbose, run, schedule_of, seed_value
from nnkd.errors import NnkdError
from nnkd.method_table import METHOD_TRAINERS, methods_help


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nnkd_train",
                       description=textwrap.fill(
                           "Train the budget student of a dataset as nnUNetv2_train does, distilling a frozen "
                           "teacher. Output: $nnUNet_results/DatasetXXX/"
                           "nnKDTrainer_<Method>[@<run name>]__nnKDPlans_<budget>__<configuration>/fold_X", 100),
                       epilog="methods (--method):\n" + methods_help() + "\n(LoRKD, several datasets at once: "
                              "nnkd_train_lorkd; details: docs/methods.md)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset ID or name")
    p.add_argument("configuration", help="e.g. 3d_fullres or 2d")
    p.add_argument("fold", help="0-4 or all")
    p.add_argument("--budget", default=None, help="student plans nnKDPlans_<budget> (tiny, small, medium, …)")
    p.add_argument("--teacher-plans", default="nnUNetPlans",
                   help="teacher plans the student was planned from (default nnUNetPlans)")
    p.add_argument("-p", dest="plans", default=None, help="name the student plans directly instead of --budget")
    p.add_argument("--method", default=None, help=f"distillation method: {', '.join(METHOD_TRAINERS)}")
    p.add_argument("-tr", dest="trainer", default=None,
                   help="an nnKDTrainer subclass by class name (found via nnUNet_extTrainer), instead of --method")
    p.add_argument("--teacher", action="append", default=[], metavar="SPEC",
                   help="teacher spec (repeat it for --method multiteacher), e.g. "
                        "nnunet:$nnUNet_results/Dataset990_Synthetic/nnUNetTrainer__nnUNetPlans__3d_fullres"
                        "[?fold=all&checkpoint=checkpoint_best.pth], "
                        "deepbet, sam:/ckpt/sam_vit_b_01ec64.pth?slices=8 (families: nnkd_teachers; "
                        "see docs/teachers.md)")
    p.add_argument("--teacher-cache", action="store_true",
                   help="train from the teacher's stored predictions (nnkd_cache_teacher) instead of running it; "
                        "logit-based methods only")
    p.add_argument("--cache-variant", default=None, metavar="SETTINGS",
                   help="with --teacher-cache, when the teacher was cached with several settings: which cache, as "
                        "its folder names it (e.g. top2, half, top2-half-float32; default: the default settings', "
                        "or the only one)")
    p.add_argument("--labeled", type=int, default=None, metavar="N",
                   help="keep only N labelled training cases of the fold (a seeded choice, written to "
                        "labeled_cases.json); validation cases are unchanged")
    p.add_argument("--unlabeled", default=None, metavar="DIR",
                   help="tskd: NIfTI images without labels (named like imagesTr) for the transfer set; preprocessed "
                        "with the dataset's plans into nnkd's own folder")
    p.add_argument("--synthetic", default=None, metavar="DIR",
                   help="tskd: a transfer-set folder of synthetic cases (nnkd_synthesize)")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="set a method hyper-parameter, e.g. --hp kd_temperature=4 (repeatable)")
    p.add_argument("--run-name", default=None, metavar="NAME",
                   help="file the run as <trainer>@NAME__<plans>__<configuration>; default: a name derived from the "
                        "teacher, cached or online, --labeled, the transfer set, --hp and --seed, so runs that differ "
                        "in any of them never share a folder (the no-KD baseline without --seed keeps nnU-Net's name)")
    p.add_argument("--seed", type=seed_value, default=None, metavar="N",
                   help="seed the RNGs of network initialisation and sampling (recorded in teacher.json); "
                        "augmentation workers stay random, so equal seeds give repeats, not copies")
    add_schedule_arguments(p)
    p.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--val", action="store_true", help="only run the final validation")
    p.add_argument("--npz", action="store_true", help="also save validation softmax outputs")
    p.add_argument("-num_gpus", type=int, default=1, help="GPUs for DDP training (nnU-Net's launcher)")
    add_verbose(p)
    return p


def hyperparameters_of(pairs: list[str]) -> dict:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise NnkdError(f"--hp {pair} is not NAME=VALUE", "e.g. --hp kd_temperature=4")
        values[name.strip()] = value.strip()
    return values


def _train(args) -> None:
    from nnkd.run.train import TrainRequest, train

    schedule = schedule_of(args)
    if args.num_gpus < 1:
        raise NnkdError(f"-num_gpus {args.num_gpus} must be at least 1", "give a positive -num_gpus")
    train(TrainRequest(
        dataset=args.dataset, configuration=args.configuration, fold=args.fold, method=args.method,
        trainer=args.trainer, budget=args.budget, plans=args.plans, teacher_plans=args.teacher_plans,
        teachers=tuple(args.teacher), teacher_cache=args.teacher_cache,
        cache_variant=args.cache_variant, labeled=args.labeled,
        unlabeled=args.unlabeled, synthetic=args.synthetic,
        hyperparameters=hyperparameters_of(args.hp), seed=args.seed,
        **schedule, device=args.device,
        continue_training=args.c, validation_only=args.val, npz=args.npz, num_gpus=args.num_gpus,
        run_name=args.run_name))


def main(argv=None) -> None:
    run(_train, build_parser(), argv)


if __name__ == "__main__":
    main()
