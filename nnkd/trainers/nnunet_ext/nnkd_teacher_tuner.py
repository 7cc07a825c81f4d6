"""Lets nnU-Net's run_training find nnkd_tune_teacher's trainer by name (nnUNet_extTrainer)."""

from nnkd.trainers.tune import nnKDTeacherTuner  # noqa: F401
