"""nnkd_benchmark: every method × budget trained on one machine, measured side by side, and reported."""
