"""CL metrics on matrices and curves chosen so that plausible wrong definitions give other numbers."""

from __future__ import annotations

import pytest

from palimpsest.metrics.continual import backward_transfer, forgetting, min_accuracy, worst_case_accuracy


def test_forgetting_uses_the_best_earlier_accuracy_not_the_task_end_one():
    # Task 0 improves after task 1 (0.5 -> 0.9), then drops to 0.4: forgetting counts the drop from 0.9,
    # BWT the change from the task-end 0.5. Here forgetting ≠ −BWT.
    R = [[0.5, 0.0, 0.0],
         [0.9, 0.8, 0.0],
         [0.4, 0.8, 0.7]]
    assert forgetting(R) == pytest.approx(((0.9 - 0.4) + (0.8 - 0.8)) / 2)
    assert backward_transfer(R) == pytest.approx(((0.4 - 0.5) + (0.8 - 0.8)) / 2)
    assert forgetting(R) != pytest.approx(-backward_transfer(R))


def test_min_acc_ignores_the_evaluation_at_the_tasks_own_end():
    # Task 0 ends at step 100; the evaluation AT step 100 is R[0,0] (0.1 here), not a later one.
    curves = {0: [(50, 0.3), (100, 0.1), (125, 0.6), (150, 0.5), (200, 0.7)]}
    assert min_accuracy(curves, [100, 200]) == {0: 0.5}  # `>=` would give 0.1


def test_wc_acc_weights_the_last_task_by_one_over_k():
    assert worst_case_accuracy(0.9, [0.3, 0.5], 3) == pytest.approx(0.9 / 3 + (2 / 3) * 0.4)
