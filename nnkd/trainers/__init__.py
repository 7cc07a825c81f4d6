"""nnU-Net trainer subclasses that distil a teacher into the student (nnKDTrainer and its method variants)."""

from pathlib import Path

# Folder for nnU-Net's `nnUNet_extTrainer` variable, so nnU-Net finds nnkd's trainers by class name.
EXT_TRAINER_FOLDER = str(Path(__file__).parent / "nnunet_ext")
