"""Evaluation: what nnkd measures about a model, the same way for every room that reports it — per-case
prediction timed in each runtime with nnU-Net's own evaluation (`measure`), and whether a training run has
converged (`convergence`). Below pipeline and benchmark, which both use it."""
