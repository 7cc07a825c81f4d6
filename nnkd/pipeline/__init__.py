"""Recipes that chain the commands: nnkd_distill (plan, cache, train, validate, export per fold)."""
