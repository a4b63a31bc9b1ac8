"""`metrics.seeds`: the bootstrap interval over seeds and the averaging of summaries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap

from palimpsest.metrics.seeds import interval, merge, summarise


def test_the_interval_is_scipys_bca_interval_of_the_mean():
    values = [0.12, 0.31, 0.18, 0.25, 0.09]
    expected = bootstrap((np.array(values),), np.mean, confidence_level=0.95, n_resamples=9999, method="BCa",
                         rng=np.random.default_rng(0)).confidence_interval
    assert interval(values) == pytest.approx([expected.low, expected.high])
    # not the interval of the median, nor a 90% one
    median = bootstrap((np.array(values),), np.median, confidence_level=0.95, n_resamples=9999, method="BCa",
                       rng=np.random.default_rng(0)).confidence_interval
    assert interval(values) != pytest.approx([median.low, median.high])
    assert interval(values, confidence=0.9)[1] < interval(values)[1]


def test_degenerate_samples():
    assert interval([0.4]) is None and interval([]) is None  # one seed: no interval
    assert interval([1.0, 1.0, 1.0]) == [1.0, 1.0]  # BCa is undefined (scipy: nan): the value itself
    assert interval([None, 0.2, 0.4]) is not None  # a seed without the metric is left out
    stats = summarise([0.2, None, 0.4])
    assert stats["mean"] == pytest.approx(0.3) and stats["values"] == [0.2, None, 0.4]


def test_merge_averages_numbers_and_keeps_what_differs_per_seed():
    merged = merge([{"a": 1, "b": "x", "c": [1, {"d": 2}], "e": None, "f": True},
                    {"a": 3, "b": "y", "c": [3, {"d": 6}], "e": None, "f": True}])
    assert merged == {"a": 2.0, "b": ["x", "y"], "c": [2.0, {"d": 4.0}], "e": None, "f": True}
    assert merge([{"m": None}, {"m": 0.5}]) == {"m": 0.5}
