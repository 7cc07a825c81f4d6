"""nnkd_make_synthetic: write a synthetic nnU-Net raw dataset to $nnUNet_raw."""

from nnkd.cli._common import ArgumentParser, add_verbose, run
from nnkd.nnunet_env import require_env


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nnkd_make_synthetic",
                       description="Write a synthetic nnU-Net raw dataset (dataset.json, imagesTr, labelsTr, "
                                   "imagesTs, labelsTs) to $nnUNet_raw/DatasetXXX_<name>.")
    p.add_argument("-d", type=int, required=True, metavar="ID", help="dataset ID, e.g. 990")
    p.add_argument("--preset", default="default", choices=("default", "multiorgan"),
                   help="the anatomy: default (organ, lesion, vessel) or multiorgan (eleven abdominal structures "
                        "from liver to adrenal glands, ~3 orders of magnitude in size, a branching vessel tree, "
                        "left/right pairs; default shape 40 128 128 in 3D, 192 192 in 2D)")
    p.add_argument("--cases", type=int, default=12, help="training cases (default 12)")
    p.add_argument("--test-cases", type=int, default=None, help="test cases (default max(2, cases/4))")
    p.add_argument("--channels", type=int, default=1, help="input channels (default 1)")
    p.add_argument("--dim", type=int, default=3, choices=(2, 3), help="3 (volumes) or 2 (single-slice images)")
    p.add_argument("--shape", type=int, nargs="+", default=None, metavar="N",
                   help="median case shape: Z Y X for 3D (default 48 64 64), Y X for 2D (default 128 128); the multiorgan "
                        "preset's defaults above")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    p.add_argument("--name", default="Synthetic", help="dataset name after the ID (default Synthetic)")
    p.add_argument("--labels", nargs="+", default=None, metavar="STRUCTURE",
                   help="label only these structures (organ, lesion, vessel, or the multiorgan preset's; default all), numbered 1, 2, … in that "
                        "order; the others stay in the images as background. Tasks with different label sets on "
                        "the same kind of images, e.g. for LoRKD")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    add_verbose(p)
    return p


def _make(args) -> None:
    from nnkd.datasets.synthetic import SyntheticSpec, write_synthetic_dataset

    raw = require_env("nnUNet_raw")["nnUNet_raw"]
    spec = SyntheticSpec(dataset_id=args.d, cases=args.cases, channels=args.channels, dim=args.dim,
                         shape=tuple(args.shape) if args.shape else None, seed=args.seed, name=args.name,
                         test_cases=args.test_cases, labels=tuple(args.labels) if args.labels else None,
                         preset=args.preset)
    target = write_synthetic_dataset(spec, raw, overwrite=args.overwrite)
    print(f"Wrote {spec.cases} training and {spec.n_test_cases} test cases to {target}")


def main(argv=None) -> None:
    run(_make, build_parser(), argv)


if __name__ == "__main__":
    main()
