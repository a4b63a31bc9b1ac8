"""rliable's protocol over seeds (metrics/rliable.py): the interquartile mean and the stratified bootstrap interval,
and the rl table built from fresh-episode test success (not the best evaluation)."""

from __future__ import annotations

import pytest

from palimpsest.metrics.rliable import iqm, stratified_iqm
from palimpsest.runners.rl import aggregate_table, success_table


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm([0.0, 0.5, 0.6, 0.7, 1.0]) == pytest.approx(0.6)  # 5 runs: the middle 3
    assert iqm([0.0, 0.1, 0.2, 0.3, 0.9, 1.0, 1.0, 1.0]) == pytest.approx((0.2 + 0.3 + 0.9 + 1.0) / 4)


def test_the_bootstrap_resamples_each_setting_apart():
    """Setting A's seeds all score 0, B's all 1: resampled within each setting every replicate holds four 0s and
    four 1s, so the IQM is 0.5 every time; resampling the pooled runs would move it."""
    stats = stratified_iqm([[0, 0, 0, 0], [1, 1, 1, 1]])
    assert stats == {"iqm": 0.5, "interval": [0.5, 0.5], "runs": 8}
    one = stratified_iqm([[0.2, 0.4, 0.9, 1.0, 1.0]])
    low, high = one["interval"]
    assert low < one["iqm"] < high and 0.2 <= low and high <= 1.0
    assert stratified_iqm([[0.3]]) == {"iqm": 0.3, "interval": None, "runs": 1}


def _row(agent, seed, test, best, held=None):
    return {"agent": agent, "env_label": "n3", "seed": seed, "test_success_rate": test, "best_eval_success_rate": best,
            "test_mean_return": test, "best_eval_mean_return": best, "test_first_stage": 1.0,
            "test_later_stages": test, "held_out": {"n5": {"success_rate": held, "mean_return": held,
                                                          "first_stage": 1.0, "later_stages": held}}}


def test_the_table_is_the_test_success_not_the_best_evaluation():
    rows = [_row("lstm", s, test, best=1.0, held=test / 2) for s, test in enumerate([0.2, 0.4, 0.6, 0.8, 1.0])]
    cell = success_table(rows)["lstm"]["n3"]
    assert cell["values"] == [0.2, 0.4, 0.6, 0.8, 1.0] and cell["iqm"] == pytest.approx(0.6)
    assert cell["best_eval_mean"] == 1.0 and cell["metric"] == "success"
    held = success_table(rows)["lstm"]["n3/n5"]
    assert held["iqm"] == pytest.approx(0.3) and held["best_eval_mean"] is None
    both = aggregate_table(rows)["lstm"]
    assert both["training"]["iqm"] == pytest.approx(0.6) and both["held_out"]["iqm"] == pytest.approx(0.3)
