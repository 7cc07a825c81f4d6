"""nnkd: distil large medical models into budget-sized nnU-Net students."""

__version__ = "0.1.0"
