"""The low-label regime: keep N labelled training cases of a fold, chosen the same way every time."""

import numpy as np

from nnkd.errors import NnkdError

LABELED_FILE = "labeled_cases.json"


def choose_labeled_cases(training_cases, count: int, fold) -> list[str]:
    """`count` of the fold's training cases, drawn with a seed of the fold (so runs of every method on a
    fold see the same cases), in sorted order."""
    cases = sorted(training_cases)
    if not 1 <= count <= len(cases):
        raise NnkdError(f"--labeled {count} is not between 1 and the fold's {len(cases)} training cases",
                        f"give --labeled 1…{len(cases)}")
    seed = 12345 + (fold if isinstance(fold, int) else 5)
    picked = np.random.RandomState(seed).choice(len(cases), count, replace=False)
    return [cases[i] for i in sorted(picked)]
