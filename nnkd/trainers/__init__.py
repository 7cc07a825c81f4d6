"""nnU-Net trainer subclasses that distil a teacher into the student (nnKDTrainer and its method variants)."""
