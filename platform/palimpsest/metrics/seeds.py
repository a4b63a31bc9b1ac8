"""Results over seeds: the mean and a 95% bootstrap interval (`scipy.stats.bootstrap`), per metric.

`interval(values)` is the one place the interval is computed: the bias-corrected and
accelerated (BCa) bootstrap of the mean, scipy's default, with a fixed generator so a
summary recomputed from the same values gives the same interval. With one value there is
no interval (None); with equal values the interval is that value (BCa is undefined there:
scipy returns nan). `merge(trees)` averages equally shaped summaries leaf by leaf.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 9999


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def interval(values: list[float], *, confidence: float = CONFIDENCE) -> list[float] | None:
    """[low, high]: the `confidence` BCa bootstrap interval of the mean of `values`; None for fewer than 2."""
    from scipy.stats import bootstrap

    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if data.size < 2:
        return None
    if np.ptp(data) == 0:
        return [float(data[0]), float(data[0])]
    with warnings.catch_warnings():  # a skewed sample of 5 may warn that BCa's interval is unstable
        warnings.simplefilter("ignore")
        result = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES, method="BCa",
                           rng=np.random.default_rng(0))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):  # BCa's acceleration is undefined on some samples: the percentile
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES,
                               method="percentile", rng=np.random.default_rng(0))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return [low, high]


def summarise(values: list[float]) -> dict:
    """{"mean", "interval", "values"} of one metric over seeds (None values — no result — left out of both)."""
    kept = [v for v in values if v is not None]
    return {"mean": float(np.mean(kept)) if kept else None, "interval": interval(kept), "values": list(values)}


def merge(trees: list):
    """One tree of the same shape: numbers averaged over `trees`, other leaves kept when all agree, else listed.

    Lists of different lengths and dicts with other keys are kept per tree (a list of them).
    """
    first = trees[0]
    if all(_number(t) for t in trees):
        return float(np.mean(trees))
    if all(isinstance(t, dict) for t in trees) and all(t.keys() == first.keys() for t in trees):
        return {key: merge([t[key] for t in trees]) for key in first}
    if all(isinstance(t, list) for t in trees) and len({len(t) for t in trees}) == 1:
        return [merge(list(items)) for items in zip(*trees)]
    if all(t == first for t in trees):
        return first
    if all(t is None or _number(t) for t in trees):  # a metric some seeds could not compute
        kept = [t for t in trees if t is not None]
        return float(np.mean(kept)) if kept else None
    return list(trees)


def leaf(tree: dict, path: str):
    """The value at a dotted `path` ("mia.min_k", "cost.ratio") of `tree`, or None."""
    for part in path.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree
