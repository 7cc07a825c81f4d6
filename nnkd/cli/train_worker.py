"""`python -m nnkd.cli.train_worker REQUEST.json`: train the TrainRequest that the file holds (written by
`TrainRequest.to_json`) as nnkd_train would, in a process of its own. nnkd_benchmark and the study scripts train
each run this way (its own peak memory; several at once with --jobs) without encoding the request as
command-line arguments again."""

import json
from pathlib import Path

from nnkd.cli._common import ArgumentParser, add_verbose, run


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m nnkd.cli.train_worker",
                       description="Train one TrainRequest given as a JSON file (how nnkd_benchmark trains its runs).")
    p.add_argument("request", type=Path, help="the request, as TrainRequest.to_json writes it")
    add_verbose(p)
    return p


def _train(args) -> None:
    from nnkd.run.train import TrainRequest, train

    train(TrainRequest.from_json(json.loads(args.request.read_text())))


def main(argv=None) -> None:
    run(_train, build_parser(), argv)


if __name__ == "__main__":
    main()
