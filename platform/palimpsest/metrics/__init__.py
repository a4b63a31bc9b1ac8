"""Metrics: continual-learning matrices, membership inference, TOFU/MUSE scores, rliable intervals, seeds."""
