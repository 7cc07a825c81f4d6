"""Datasets nnkd writes itself: the synthetic generator, converters for benchmark data."""
