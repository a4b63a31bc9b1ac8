"""TOFU / MUSE unlearning metrics on hand-computed inputs (each would fail on the plausible wrong variant)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from palimpsest.metrics.tofu import (
    answer_probability, exact_memorization, extraction_strength, forget_quality, forget_quality_floor,
    forget_truth_ratio_score, model_utility, privleak, retain_truth_ratio_score, rouge_l_recall, smallest_forget_set,
    truth_ratios,
)


def test_truth_ratio_averages_perturbed_losses_before_exponentiating_and_puts_false_over_true():
    ratios = truth_ratios([1.0, 2.0], [[2.0, 4.0], [1.0]])
    # item 0: exp(-mean(2, 4)) / exp(-1) = e^-2; item 1: exp(-1) / exp(-2) = e
    np.testing.assert_allclose(ratios, [math.exp(-2.0), math.e])
    # not the mean of the perturbed probabilities (0.2088), nor true over false (e^2)
    assert abs(ratios[0] - 0.2088) > 0.05 and abs(ratios[0] - math.exp(2.0)) > 1
    with pytest.raises(ValueError):
        truth_ratios([1.0], [[]])
    with pytest.raises(ValueError):
        truth_ratios([1.0, 2.0], [[1.0]])


def test_truth_ratio_summaries_of_the_forget_and_the_other_splits():
    assert forget_truth_ratio_score([0.5, 2.0, 1.0]) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert retain_truth_ratio_score([0.5, 2.0, 0.25]) == pytest.approx((0.5 + 0.0 + 0.75) / 3)


def test_forget_quality_is_the_two_sample_ks_p_value():
    # n = m = 3 and complete separation: D = 1, exact two-sided p = 2 / C(6, 3) = 0.1
    assert forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    assert forget_quality([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_answer_probability_plain_and_against_false_options():
    assert answer_probability([0.0, math.log(2)]) == pytest.approx(0.75)
    # P(true) = 1/2, P(false) = 1/4 + 1/4: 0.5 / (0.5 + 0.5)
    assert answer_probability([math.log(2)], [[math.log(4), math.log(4)]]) == pytest.approx(0.5)


def test_rouge_l_is_recall_against_the_reference_with_stemming():
    assert rouge_l_recall(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(0.5)  # precision would be 1
    assert rouge_l_recall(["cats running"], ["cat run"]) == pytest.approx(1.0)
    assert rouge_l_recall(["a b", "x"], ["a b", "y"]) == pytest.approx(0.5)


def test_model_utility_is_the_harmonic_mean_and_privleak_the_relative_auc_gap():
    assert model_utility({"retain_probability": 0.5, "retain_rouge": 1.0}) == pytest.approx(2 / 3)  # mean: 0.75
    assert model_utility({"a": 0.0, "b": 1.0}) == 0.0
    # MUSE's sign, as open-unlearning: AUCs as 1 − AUC, relative to the retain model's.
    assert privleak(1.0, 0.5) == pytest.approx(-100.0)  # a memorised target
    assert privleak(0.5, 0.5) == pytest.approx(0.0)
    assert privleak(0.6, 0.5) == pytest.approx(-20.0)  # leaks more than retraining: negative
    assert privleak(0.3, 0.5) == pytest.approx(40.0)  # over-unlearned: positive
    assert privleak(0.8, 0.6) == pytest.approx(-50.0)  # (0.2 − 0.4) / 0.4, not (0.6 − 0.8) / 0.6
    assert privleak(0.3, 1.0) is None  # undefined, not a ZeroDivisionError


def test_exact_memorization_and_extraction_strength_as_open_unlearning():
    hits = [[True, True, False, True, True], [False] * 4, [True] * 3]
    assert exact_memorization(hits) == pytest.approx((0.8 + 0.0 + 1.0) / 3)
    # The first suffix wholly predicted starts at k = 3 of 5 (ES 0.4); none at all leaves the reference's loop at
    # k = n − 1 (ES 1/4); all predicted: k = 0 (ES 1).
    assert extraction_strength(hits) == pytest.approx((0.4 + 0.25 + 1.0) / 3)
    assert extraction_strength([[True, False]]) == pytest.approx(0.5)  # only the last token missed: k = 1
    assert extraction_strength([[False, True]]) == pytest.approx(0.5)  # only the last token hit: k = 1
    assert exact_memorization([[], [True, False]]) == pytest.approx(0.5)  # empty items are left out
    assert extraction_strength([[], [True]]) == pytest.approx(0.5)  # but score 0 in ES
    assert exact_memorization([[]]) is None


def test_a_forget_set_too_small_for_the_ks_test_is_flagged_with_the_size_it_needs():
    """Done-means 11 (#22): 3 items cannot give forget quality below 0.1 = 2 / C(6, 3)."""
    from palimpsest.data import QAExample
    from palimpsest.runners.unlearn import forget_set_warnings
    from palimpsest.runners.unlearn_data import Point, Request

    assert forget_quality_floor(3) == pytest.approx(2 / math.comb(6, 3))
    assert forget_quality_floor(4) == pytest.approx(2 / math.comb(8, 4))
    assert smallest_forget_set(0.05) == 4
    items = [QAExample(f"q{i}?", f"a{i}.") for i in range(4)]
    points = [Point(Request(name, items[:n], "h"), items[:n], [], {"forget": items[:n]}) for name, n in
              (("r1", 3), ("r2", 4))]
    (warning,) = forget_set_warnings(points)
    assert warning.startswith("after request r1: the forget set has 3 scored item(s)") and "at least 4 items" in warning
