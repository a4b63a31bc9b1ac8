"""Utility against forget quality along a sweep: how far one method's curve lies above another's.

A sweep lists a method at several learning rates or step counts; each setting is a point
(forget quality, model utility). `utility_gap(base, other)` is the mean, over the forget
quality range both curves cover, of other's utility minus base's at equal forget quality:
each curve is the piecewise-linear interpolation of utility in log10(forget quality)
through its points taken in order of forget quality (a sweep need not be monotone; forget
quality moves in orders of magnitude), compared on 101 evenly
spaced points of the shared range. Curves that share no range have no gap (None).
"""

from __future__ import annotations

import math

import numpy as np

GRID = 101
FLOOR = 1e-300  # a forget quality of 0 (an underflowed KS p-value) sits at the bottom of the log axis


def _curve(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    xs = np.array([math.log10(max(fq, FLOOR)) for fq, _ in points])
    ys = np.array([u for _, u in points], dtype=float)
    order = np.argsort(xs, kind="stable")
    return xs[order], ys[order]


def utility_gap(base: list[tuple[float, float]], other: list[tuple[float, float]]) -> dict | None:
    """{"gap", "range"}: mean utility of `other` minus `base` at equal forget quality over the shared range
    (`range`: the [low, high] forget qualities compared); None when either has fewer than 2 points or the
    curves share no range."""
    if len(base) < 2 or len(other) < 2:
        return None
    (bx, by), (ox, oy) = _curve(base), _curve(other)
    low, high = max(bx[0], ox[0]), min(bx[-1], ox[-1])
    if not low < high:
        return None
    grid = np.linspace(low, high, GRID)
    gap = float(np.mean(np.interp(grid, ox, oy) - np.interp(grid, bx, by)))
    return {"gap": gap, "range": [10.0 ** low, 10.0 ** high]}


def gu_gaps(methods: dict) -> dict:
    """Per method swept both with and without GU (summary blocks carrying `base` and `variant`): GU's curve
    against its base method's (`utility_gap(base, base+gu)`; positive: GU keeps more utility)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for block in methods.values():
        if block.get("variant") and block.get("forget_quality") is not None:
            curves.setdefault(block["base"], []).append((block["forget_quality"], block["model_utility"]))
    return {base: utility_gap(points, curves[f"{base}+gu"]) for base, points in curves.items()
            if not base.endswith("+gu") and f"{base}+gu" in curves}
