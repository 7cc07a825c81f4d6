"""nnkd_benchmark: train every method × budget, measure teacher and students side by side, and report."""

from nnkd.cli._common import ArgumentParser, add_deprecated, add_verbose, run


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nnkd_benchmark",
                       description="Plan each budget, train each method (and logit KD from a cached teacher), "
                                   "predict the fold's validation cases with the teacher and every student, and "
                                   "write results.json, report.md and plots. Finished runs are skipped on rerun.")
    p.add_argument("-d", metavar="DATASET", help="dataset ID or name (default with --quick: a synthetic one)")
    p.add_argument("-c", default="3d_fullres", metavar="CONFIGURATION")
    p.add_argument("--teacher", metavar="SPEC", action="append", default=[],
                   help="teacher spec (with --quick: a briefly trained nnU-Net); repeat it for multiteacher, which "
                        "distils all of them (the first is measured and teaches the other methods)")
    p.add_argument("--methods", default="none,logit,feature,cka,drd",
                   help="comma-separated methods (also: multiteacher, with every --teacher; tskd, which with --labeled "
                        "also distils on the unlabelled rest); a method may carry hyper-parameters as "
                        "METHOD?NAME=VALUE&NAME=VALUE, e.g. 'logit?kd_loss=kl&kd_temperature=1' (a variant of its own)")
    p.add_argument("--budgets", default="tiny,small", help="comma-separated budgets (tiny, small, medium, "
                                                           "params200000, gflops5, …)")
    p.add_argument("-f", default="0", metavar="FOLD")
    p.add_argument("--labeled", type=int, metavar="N", help="keep N labelled training cases in every run")
    p.add_argument("--epochs", type=int, default=100, help="epochs per run (default 100)")
    p.add_argument("--iterations-per-epoch", dest="iterations", type=int, default=250,
                   help="training iterations per epoch (default 250)")
    add_deprecated(p, "--iterations", "--iterations-per-epoch", "iterations", type=int)
    add_deprecated(p, "--val-iterations", "--val-iterations-per-epoch", "val_iterations", type=int)
    p.add_argument("--val-iterations-per-epoch", dest="val_iterations", type=int, default=1,
                   help="nnU-Net validation iterations per epoch: the pseudo Dice of the learning curves (default 1)")
    p.add_argument("--seeds", type=int, default=None,
                   help="repeat every run with seeds 0 … N−1 and report mean ± std and the paired Δ to no KD with "
                        "its 95 %% interval (default 3; 1 with --quick)")
    p.add_argument("--no-cache", action="store_true",
                   help="skip the cached-teacher runs (logit KD, and tskd with feature_weight=0)")
    p.add_argument("--cached-only", action="store_true",
                   help="logit KD (and tskd with feature_weight=0) only from the cached teacher (skip their online runs)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime latency")
    p.add_argument("--int8", action="store_true",
                   help="also quantize every model as nnkd_export --int8 does (calibrated on the fold's training "
                        "cases) and measure its Dice and latency in ONNX Runtime int8")
    p.add_argument("--device", "-device", default=None, choices=("cpu", "cuda", "mps"),
                   help="training device, latency is measured on it too (default: cuda if available, else cpu)")
    p.add_argument("-np", type=int, default=2, help="processes for preprocessing and data augmentation")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N runs at once (default 1); on the CPU each gets its share of the cores "
                        "(OMP_NUM_THREADS = cores / N unless set), the costliest runs (live teacher, larger "
                        "student) first. Seconds per iteration then include the sharing")
    p.add_argument("--quick", action="store_true",
                   help="minutes-long smoke run: a small synthetic dataset, 1 epoch × 2 iterations")
    p.add_argument("-o", required=True, metavar="OUT", help="output folder (runs, predictions, report)")
    add_verbose(p)
    return p


def _benchmark(args) -> None:
    from pathlib import Path

    from nnkd.benchmark.study import BenchmarkRequest, run_benchmark

    split = lambda text: tuple(v for v in text.split(",") if v)  # noqa: E731
    run_benchmark(BenchmarkRequest(
        output=Path(args.o), dataset=args.d, configuration=args.c, teacher=args.teacher[0] if args.teacher else None,
        extra_teachers=tuple(args.teacher[1:]),
        methods=split(args.methods), budgets=split(args.budgets), fold=args.f, labeled=args.labeled,
        num_epochs=args.epochs, num_iterations_per_epoch=args.iterations,
        num_val_iterations_per_epoch=args.val_iterations,
        seeds=args.seeds if args.seeds is not None else (0 if args.quick else 3),
        cached_only=args.cached_only, device=args.device, cached=not args.no_cache,
        onnx=not args.no_onnx, int8=args.int8, quick=args.quick, num_processes=args.np,
        jobs=args.jobs))
    print(f"nnkd: benchmark written to {Path(args.o) / 'report.md'} and results.json")


def main(argv=None) -> None:
    run(_benchmark, build_parser(), argv)


if __name__ == "__main__":
    main()
