"""Metric functions: CL matrix metrics (pure), membership inference (runs the model over examples, draws a histogram)."""
