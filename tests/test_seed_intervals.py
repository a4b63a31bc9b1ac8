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
    assert merge([0.0, 0.1, 0.8]) == pytest.approx(0.3)  # the mean over seeds, not the median


def test_utility_gap_compares_curves_at_equal_forget_quality_on_the_shared_log_range():
    from palimpsest.metrics.curves import gu_gaps, utility_gap

    base = [(1e-4, 0.50), (1e-2, 0.40), (1.0, 0.20)]
    # 0.1 above the base everywhere, sampled at other forget qualities: the gap is 0.1 over [1e-3, 1e-1]
    other = [(1e-3, 0.45 + 0.1), (1e-2, 0.40 + 0.1), (1e-1, 0.30 + 0.1)]  # the base: 0.45, 0.40, 0.30 there
    gap = utility_gap(base, other)
    assert gap["gap"] == pytest.approx(0.1) and gap["range"] == pytest.approx([1e-3, 1e-1])
    assert utility_gap(other, base)["gap"] == pytest.approx(-0.1)  # the sign: other minus base
    # interpolated in log10 forget quality, not linearly: halfway between 1e-4 and 1e-2 is 1e-3
    assert utility_gap(base, [(1e-3, 0.45), (1e-3 * 1.0001, 0.45)])["gap"] == pytest.approx(0.0, abs=1e-4)
    assert utility_gap(base, [(10.0, 0.1), (100.0, 0.1)]) is None  # no shared range
    assert utility_gap(base, [(1.0, 0.1), (100.0, 0.1)]) is None  # one shared forget quality is no range
    assert utility_gap(base, [(1e-3, 0.4)]) is None  # one point is no curve
    methods = {f"npo@lr{i}": {"base": "npo", "variant": {"lr": i}, "forget_quality": fq, "model_utility": u}
               for i, (fq, u) in enumerate(base)}
    methods.update({f"npo+gu@lr{i}": {"base": "npo+gu", "variant": {"lr": i}, "forget_quality": fq,
                                      "model_utility": u} for i, (fq, u) in enumerate(other)})
    methods["retrain"] = {"base": "retrain", "variant": None, "forget_quality": 0.9, "model_utility": 0.5}
    assert gu_gaps(methods)["npo"]["gap"] == pytest.approx(0.1) and set(gu_gaps(methods)) == {"npo"}
