"""`none`: the student alone on the same schedule, the baseline."""

from nnkd.trainers.nnkd_trainer import nnKDTrainer


class nnKDTrainer_NoKD(nnKDTrainer):
    """The student alone on the same schedule: the baseline every report compares to."""

    method = "none"  # needs_teacher = False: its row in nnkd.method_table (teachers="none")
