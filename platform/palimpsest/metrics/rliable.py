"""RL results over seeds as rliable reports them (Agarwal et al., "Deep RL at the Edge of the Statistical
Precipice", NeurIPS 2021): the interquartile mean and a 95% stratified bootstrap interval.

- IQM: the mean of the middle 50% of the scores, `scipy.stats.trim_mean(scores, 0.25)`
  (rliable's `metrics.aggregate_iqm`; with 5 seeds, the mean of the middle 3).
- Stratified bootstrap: each task's runs are resampled with replacement within that task,
  independently of the other tasks, and the IQM is taken over all resampled scores
  together (rliable's `StratifiedBootstrap`); the interval is the percentile interval of
  the resampled IQMs (rliable's default). With one task it is the plain bootstrap over
  seeds. `scipy.stats.bootstrap` does the resampling: its samples are the tasks, resampled
  independently (`paired=False`), which is exactly the stratification.
- Resamples: `RESAMPLES` with a fixed generator, so a summary recomputed from the same
  scores gives the same interval.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 9999


def iqm(scores) -> float:
    """Interquartile mean of `scores` (all of them: one task's seeds, or every task's runs together)."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(scores, dtype=float).ravel(), 0.25))


def stratified_iqm(tasks: list[list[float]], *, confidence: float = CONFIDENCE) -> dict:
    """{"iqm", "interval", "runs"}: the IQM over every task's runs, and its stratified bootstrap interval (None with
    fewer than 2 runs in every task: nothing to resample)."""
    from scipy.stats import bootstrap, trim_mean

    samples = [np.asarray([v for v in t if v is not None and not math.isnan(v)], dtype=float) for t in tasks]
    samples = [s for s in samples if s.size]
    if not samples:
        return {"iqm": None, "interval": None, "runs": 0}
    point = iqm(np.concatenate(samples))
    runs = int(sum(s.size for s in samples))
    if max(s.size for s in samples) < 2:
        return {"iqm": point, "interval": None, "runs": runs}
    if all(np.ptp(s) == 0 for s in samples) and np.ptp(np.concatenate(samples)) == 0:
        return {"iqm": point, "interval": [point, point], "runs": runs}

    def statistic(*resampled, axis=-1):
        return trim_mean(np.concatenate(resampled, axis=axis), 0.25, axis=axis)

    with warnings.catch_warnings():  # degenerate tasks (all seeds equal) make scipy warn; the interval stands
        warnings.simplefilter("ignore")
        result = bootstrap(samples, statistic, paired=False, vectorized=True, confidence_level=confidence,
                           n_resamples=RESAMPLES, method="percentile", rng=np.random.default_rng(0))
    return {"iqm": point, "interval": [float(result.confidence_interval.low), float(result.confidence_interval.high)],
            "runs": runs}
