"""nnkd_synthesize: train a small diffusion model on a task's preprocessed images and add synthetic transfer cases."""

from nnkd.cli._common import ArgumentParser, add_deprecated, add_verbose, run, seed_value
from nnkd.datasets.synthesis import DEFAULT_CHANNELS, DiffusionSettings
from nnkd.outputs import check_output


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nnkd_synthesize",
                       description="TS-KD transfer set: train a small diffusion model (MONAI, DDPM) on random crops "
                                   "of the configuration's preprocessed training images and write N synthetic cases "
                                   "(one crop each; 2D: single-slice volumes) in nnU-Net's preprocessed format to "
                                   "$nnUNet_preprocessed/DatasetXXX/nnkd_transfer/<plans>__<data identifier>/<name>, "
                                   "with a PNG grid of samples and the model checkpoint in its nnkd/ folder. A rerun "
                                   "with the same training settings reuses the checkpoint and only adds the missing "
                                   "cases (-n is the total).")
    p.add_argument("-d", required=True, metavar="DATASET", help="dataset ID or name")
    p.add_argument("-c", default="3d_fullres", metavar="CONFIGURATION", help="default 3d_fullres")
    p.add_argument("--teacher-plans", dest="plans", default="nnUNetPlans", metavar="PLANS",
                   help="the dataset's teacher plans, whose preprocessed data is learnt (default nnUNetPlans; "
                        "student plans share it)")
    add_deprecated(p, "-p", "--teacher-plans", "plans")
    p.add_argument("-n", required=True, type=int, metavar="N", help="number of synthetic cases the set should hold")
    p.add_argument("--name", default="synthetic", help="transfer-set name (default synthetic)")
    p.add_argument("-o", default=None, metavar="DIR", help="an explicit transfer-set folder instead of --name")
    p.add_argument("--size", type=int, nargs="+", default=None, metavar="S",
                   help="crop size the model learns and samples (3 values for 3D, 2 for 2D; multiples of "
                        "2^(levels-1)); default: the configuration's patch size")
    p.add_argument("--epochs", type=int, default=DiffusionSettings.epochs,
                   help=f"default {DiffusionSettings.epochs}")
    p.add_argument("--steps-per-epoch", type=int, default=DiffusionSettings.steps_per_epoch,
                   help=f"default {DiffusionSettings.steps_per_epoch}")
    p.add_argument("--batch-size", type=int, default=DiffusionSettings.batch_size,
                   help=f"crops per training step, cases per sampling batch (default {DiffusionSettings.batch_size})")
    p.add_argument("--channels", type=int, nargs="+", default=list(DEFAULT_CHANNELS), metavar="C",
                   help=f"widths per level, multiples of 8 (default {' '.join(map(str, DEFAULT_CHANNELS))})")
    p.add_argument("--inference-steps", type=int, default=50, help="DDIM sampling steps (default 50)")
    p.add_argument("--device", "-device", default=None, help="cpu, cuda or mps (default: cuda if visible)")
    p.add_argument("--seed", type=seed_value, default=0, help="seeds training and each case's starting noise (default 0)")
    add_verbose(p)
    return p


def _synthesize(args) -> None:
    from nnkd.datasets.synthesis import SynthesisRequest, synthesize
    from nnkd.datasets.transfer import TRANSFER_FOLDER

    if args.o is not None:  # an explicit set: never nnU-Net's data or a model; nnkd's transfer folder is fine
        check_output(args.o, "nnkd_synthesize", replaces=False, own_preprocessed_folder=TRANSFER_FOLDER)

    synthesize(SynthesisRequest(dataset=args.d, count=args.n, configuration=args.c, plans=args.plans,
                                size=tuple(args.size) if args.size else None, channels=tuple(args.channels),
                                epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                                inference_steps=args.inference_steps, device=args.device, seed=args.seed,
                                name=args.name, output=args.o))


def main(argv=None) -> None:
    run(_synthesize, build_parser(), argv)


if __name__ == "__main__":
    main()
