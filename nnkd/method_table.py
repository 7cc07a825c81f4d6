"""The one table of nnkd's distillation methods: method name → trainer class name, a one-line summary, and what
the method needs (its capability flags: how many teachers, whether it trains on a transfer set).

The trainer classes live in nnkd.trainers (nnkd.trainers.methods.METHODS maps the names to them and gives each
class the flags of its row: `needs_teacher`, `takes_several_teachers`, `takes_transfer_set`); code that only needs
names or flags (the CLI's help, nnkd_distill's checks, finding a trained student's folder, deployment, the
benchmark's reports) reads this table and imports no training code.
"""

from typing import NamedTuple


class Method(NamedTuple):
    trainer: str  # the nnU-Net trainer class name (nnUNetv2_train -tr …)
    summary: str  # one line, for --help and the docs
    teachers: str = "one"  # "none" (the baseline), "one", or "several" (--teacher A --teacher B …)
    transfer_set: bool = False  # trains on a transfer set too (--unlabeled / --synthetic; KD only there)

    @property
    def one_step(self) -> bool:
        """nnkd_distill runs it: at most one teacher and the dataset's own cases (no transfer set to build first)."""
        return self.teachers != "several" and not self.transfer_set


LORKD_METHOD = "lorkd"
LORKD_TRAINER = "nnKDTrainer_LoRKD"

# single-dataset methods, trained by nnkd_train --method NAME
METHOD_TABLE = {
    "none": Method("nnKDTrainer_NoKD", "the student alone on the same schedule: the baseline", teachers="none"),
    "logit": Method("nnKDTrainer_Logit", "logit KD, class-balanced KL at T = 1 by default; a cached teacher serves it"),
    "cwd": Method("nnKDTrainer_CWD", "channel-wise distillation: per-class spatial softmax of the logits, KL × τ²"),
    "feature": Method("nnKDTrainer_Feature", "FitNets: projected encoder-stage features, MSE or cosine"),
    "cka": Method("nnKDTrainer_CKA", "linear CKA between student and teacher stage features, no projector"),
    "drd": Method("nnKDTrainer_DRD", "Deep Reprogramming Distillation: reprogrammed teacher stages, hybrid logits, CKA"),
    "multiteacher": Method("nnKDTrainer_MultiTeacher",
                           "several teachers of any family: adaptors on standardised features, logit KD where labels match",
                           teachers="several"),
    "tskd": Method("nnKDTrainer_TSKD", "TS-KD: logit and feature KD from a task-tuned teacher, with a transfer set",
                   transfer_set=True),
}
BASELINE = "none"  # the student alone: every report's comparison
DEFAULT_METHOD = "logit"  # nnkd_distill's default, class-balanced logit KD: what the studies measure as "KD"
METHOD_TRAINERS = {name: method.trainer for name, method in METHOD_TABLE.items()}
# every method, LoRKD (nnkd_train_lorkd, several datasets at once) included
ALL_METHOD_TRAINERS = METHOD_TRAINERS | {LORKD_METHOD: LORKD_TRAINER}


def methods_help() -> str:
    """The method list of --help: one line per method."""
    return "\n".join(f"  {name:13s}{method.summary}" for name, method in METHOD_TABLE.items())

