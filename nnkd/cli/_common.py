"""What every console script shares: nnkd's error line and exit codes."""

import argparse
import sys
import traceback
import warnings
from typing import Callable, Sequence

from nnkd.errors import NnkdError

EXIT_USAGE = 2
EXIT_ERROR = 1


def fail(message: str, code: int = EXIT_ERROR) -> None:
    print(f"nnkd: error: {message}", file=sys.stderr)
    sys.exit(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage mistakes on one `nnkd: error:` line."""

    def error(self, message: str) -> None:
        fail(f"{message} — see {self.prog} --help", EXIT_USAGE)


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
