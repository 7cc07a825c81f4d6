"""What every console script shares: nnkd's error line and exit codes."""

import argparse
import sys
import traceback
import warnings
from typing import Callable, Sequence

from nnkd.errors import NnkdError
from nnkd.records import software_versions

EXIT_USAGE = 2
EXIT_ERROR = 1


def fail(message: str, code: int = EXIT_ERROR) -> None:
    print(f"nnkd: error: {message}", file=sys.stderr)
    sys.exit(code)


class VersionAction(argparse.Action):
    """`--version`: nnkd's version and those of what it runs on (read only when asked: torch is slow to import)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default,
                         help=help or "print nnkd's, nnU-Net's and torch's versions and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        found = software_versions()
        print(f"{parser.prog} {found.pop('nnkd')} ("
              + ", ".join(f"{name} {version}" for name, version in found.items()) + ")")
        parser.exit()


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage mistakes on one `nnkd: error:` line and answers `--version`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action=VersionAction)

    def error(self, message: str) -> None:
        fail(f"{message} — see {self.prog} --help", EXIT_USAGE)


class DeprecatedSpelling(argparse.Action):
    """An old spelling of an option that works for one more release and says which spelling replaces it."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        self.replacement = replacement
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"nnkd: note: {option_string} is deprecated and goes in the next release; use {self.replacement}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated(parser: argparse.ArgumentParser, old: str, replacement: str, dest: str, **kwargs) -> None:
    """Keep `old` working (with a note) for the option now spelled `replacement`, stored in `dest`."""
    parser.add_argument(old, dest=dest, action=DeprecatedSpelling, replacement=replacement, **kwargs)


def _integer(text: str, what: str, low: int, high: float, outside: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text} {outside}")
    return value


def seed_value(text: str) -> int:
    """argparse type of --seed: an integer in 0…2**32−1 (the launchers' own limit, checked again for requests made
    from Python)."""
    from nnkd.run.common import SEED_MAX  # the launchers' module; only needed once a --seed is given

    return _integer(text, "an integer seed", 0, SEED_MAX, f"is outside 0…{SEED_MAX}; give a seed in that range")


def count_value(text: str) -> int:
    """argparse type of a number of processes: an integer of at least 1."""
    return _integer(text, "a whole number", 1, float("inf"), "must be at least 1")


def finite_value(text: str) -> float:
    """argparse type of a limit or factor: a finite number (inf and nan are refused)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def add_dataset_configuration_fold(parser: argparse.ArgumentParser, fold_help: str = "0-4 or all") -> None:
    """`-d DATASET -c CONFIG -f FOLD`, as nnU-Net's commands other than nnUNetv2_train take them."""
    parser.add_argument("-d", required=True, metavar="DATASET", help="dataset ID or name")
    parser.add_argument("-c", dest="configuration", required=True, metavar="CONFIG",
                        help="configuration, e.g. 3d_fullres or 2d")
    parser.add_argument("-f", required=True, metavar="FOLD", help=fold_help)


def add_budget_arguments(parser: argparse.ArgumentParser, title: str) -> None:
    """The student budget, as nnkd_plan_and_preprocess and nnkd_distill take it: a preset, or absolute limits
    on parameters, GFLOPs per patch and measured patch latency (those may be combined)."""
    from nnkd.planners.budget import LATENCY_DEVICES, LATENCY_RUNTIMES, PRESETS

    budget = parser.add_argument_group(title)
    budget.add_argument("--budget", default=None, metavar="PRESET|1/N",
                        help="fraction of the teacher plan's parameters and GFLOPs: "
                             + ", ".join(f"{k} ≤ 1/{round(1 / v)}" for k, v in PRESETS.items())
                             + ", or any 1/N with N ≥ 2, e.g. 1/64 (plans nnKDPlans_frac64)")
    budget.add_argument("--max-params", type=int, default=None, metavar="N", help="absolute parameter limit")
    budget.add_argument("--max-gflops", type=finite_value, default=None, metavar="G",
                        help="absolute limit on GFLOPs per patch (may be combined with --max-params)")
    budget.add_argument("--max-latency", type=finite_value, default=None, metavar="MS",
                        help="milliseconds per patch, measured on this machine (may be combined with the absolute "
                             "limits): the largest student whose forward pass fits")
    budget.add_argument("--latency-device", choices=LATENCY_DEVICES, default="cpu",
                        help="where --max-latency is measured (default cpu)")
    budget.add_argument("--latency-runtime", choices=LATENCY_RUNTIMES, default=None,
                        help="fast: as nnkd_predict runs it on the CPU (the fastest of torch, torch oneDNN, "
                             "channels-last and ONNX Runtime; the default on the CPU, plans named …ms-fast); "
                             "torch; or ONNX Runtime on an exported copy (onnx). Default on cuda: torch")


def budget_of(args: argparse.Namespace, default_preset: str | None = None):
    """The Budget the arguments of add_budget_arguments give (`default_preset` when none is given)."""
    from nnkd.planners.budget import Budget

    if default_preset and not (args.budget or args.max_params or args.max_gflops or args.max_latency):
        return Budget(preset=default_preset)
    return Budget(preset=args.budget, max_params=args.max_params, max_gflops=args.max_gflops,
                  max_latency_ms=args.max_latency, latency_device=args.latency_device,
                  latency_runtime=args.latency_runtime)


def add_step_size(parser: argparse.ArgumentParser, what: str) -> None:
    """nnU-Net's `-step_size`, the sliding-window step as a fraction of the patch (checked by check_step_size)."""
    parser.add_argument("-step_size", dest="step_size", type=finite_value, default=0.5,
                        help=f"sliding-window step of {what}, a fraction of the patch in (0, 1] (default 0.5)")


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show the full traceback on errors")


def run(entry: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> None:
    """Parse `argv`, call `entry`, and turn an NnkdError into one line and a non-zero exit."""
    args = parser.parse_args(argv)
    if not args.verbose:  # library deprecation chatter would bury nnkd's own messages
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        entry(args)
    except NnkdError as e:
        if args.verbose:
            traceback.print_exc()
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted", 130)


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """nnU-Net's training schedule and device, as nnkd_train, nnkd_train_lorkd and nnkd_tune_teacher take them."""
    parser.add_argument("--epochs", type=int, default=None, help="epochs (nnU-Net default 1000)")
    parser.add_argument("--iterations-per-epoch", type=int, default=None, help="training iterations per epoch (250)")
    parser.add_argument("--val-iterations-per-epoch", type=int, default=None,
                        help="validation iterations per epoch (50)")
    parser.add_argument("--device", "-device", dest="device", default=None, choices=("cpu", "cuda", "mps"),
                        help="default: cuda if available, else cpu")


def check_step_size(value: float, flag: str) -> float:
    """nnU-Net's sliding-window step, a fraction of the patch in (0, 1]; checked before anything is written."""
    if not 0 < value <= 1:
        raise NnkdError(f"{flag} {value} is out of range", "use a value in (0, 1], e.g. 0.5")
    return value


def schedule_of(args: argparse.Namespace) -> dict:
    """The schedule options given, by nnU-Net trainer attribute name; each must be at least 1."""
    from nnkd.trainers.run_config import SCHEDULE_FLAGS

    schedule = {}
    for key, name in SCHEDULE_FLAGS.items():
        value = getattr(args, name.lstrip("-").replace("-", "_"))
        if value is not None:
            if value < 1:
                raise NnkdError(f"{name} {value} must be at least 1", f"give a positive {name}")
            schedule[key] = value
    return schedule
