"""Student planning: nnU-Net plans whose architecture is sized to a budget."""
