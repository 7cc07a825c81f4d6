"""nnkd_tune_teacher: TS-KD step 1, a foundation teacher tuned to the task with LoRA and a light head."""

from nnkd.cli._common import (ArgumentParser, add_dataset_configuration_fold, add_deprecated, add_schedule_arguments,
                              add_verbose, run, schedule_of, seed_value)
from nnkd.errors import NnkdError


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nnkd_tune_teacher",
                       description="Tune a foundation teacher to a dataset with nnU-Net's training loop: peft LoRA "
                                   "adapters on its attention projections plus a light segmentation head; only "
                                   "those train. Output: $nnUNet_results/DatasetXXX/nnKDTeacherTuner__<plans>__"
                                   "<configuration>/fold_X, loaded as a teacher with logits by tuned:<that folder>.")
    add_dataset_configuration_fold(p)
    p.add_argument("--teacher", required=False, default=None, metavar="SPEC",
                   help="the base teacher, e.g. sam:/ckpt/sam_vit_b_01ec64.pth?slices=8 (families with attention: "
                        "sam, medsam, sam-med3d, dinov2, rad-dino, swin, medclip)")
    p.add_argument("--teacher-plans", dest="plans", default="nnUNetPlans",
                   help="the dataset's teacher plans, whose preprocessed data the tuner trains on (default nnUNetPlans)")
    add_deprecated(p, "-p", "--teacher-plans", "plans")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank r (default 8)")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA α (scale α/r; default 16)")
    p.add_argument("--head-hidden", type=int, default=32, help="channels of the segmentation head (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, poly-decayed (default 1e-3)")
    p.add_argument("--labeled", type=int, default=None, metavar="N",
                   help="tune on N labelled training cases of the fold (the same seeded choice as nnkd_train)")
    p.add_argument("--seed", type=seed_value, default=None, metavar="N",
                   help="seed Python's, NumPy's and torch's RNGs before the head and LoRA adapters are built "
                        "(recorded in tuning.json; a resumed tuning keeps it)")
    add_schedule_arguments(p)
    p.add_argument("--c", dest="continue_training", action="store_true", help="continue from the latest checkpoint")
    add_verbose(p)
    return p


def _tune(args) -> None:
    from nnkd.run.tune import TuneRequest, tune
    from nnkd.trainers.tune import TuningConfig

    schedule = schedule_of(args)
    if not args.teacher and not args.continue_training:
        raise NnkdError("--teacher SPEC is required", "e.g. --teacher sam:/ckpt/sam_vit_b_01ec64.pth")
    tuning = TuningConfig(base_spec=args.teacher, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                          head_hidden=args.head_hidden, learning_rate=args.lr, labeled=args.labeled, schedule=schedule,
                          seed=args.seed)
    tune(TuneRequest(dataset=args.d, configuration=args.configuration, fold=args.f, tuning=tuning, plans=args.plans,
                     device=args.device, continue_training=args.continue_training))


def main(argv=None) -> None:
    run(_tune, build_parser(), argv)


if __name__ == "__main__":
    main()
