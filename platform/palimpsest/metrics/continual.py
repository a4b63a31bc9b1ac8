"""Continual-learning metrics from the accuracy matrix and from continual-evaluation curves.

R is T×T: R[i, j] = accuracy on task j after training task i (0-based). Definitions:
- ACC, BWT, FWT: Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual
  Learning", 2017, eq. (2)-(4). FWT is measured against `baseline[j]`, the accuracy of
  the model before any training (the random-init row).
- forgetting: Chaudhry et al., "Riemannian Walk for Incremental Learning", 2018:
  mean over j < T-1 of max_{l < T-1} R[l, j] - R[T-1, j].
- min-ACC, WC-ACC: De Lange et al., "Continual Evaluation for Lifelong Learning:
  Identifying the Stability Gap", 2023, eq. (5)-(6).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def _matrix(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square T×T with T ≥ 1, got shape {R.shape}")
    return R


def average_accuracy(R) -> float:
    """ACC = (1/T) Σ_j R[T-1, j]."""
    R = _matrix(R)
    return float(R[-1].mean())


def backward_transfer(R) -> float:
    """BWT = 1/(T-1) Σ_{i<T-1} R[T-1, i] - R[i, i] (0 when T = 1)."""
    R = _matrix(R)
    T = len(R)
    if T == 1:
        return 0.0
    return float(np.mean([R[-1, i] - R[i, i] for i in range(T - 1)]))


def forward_transfer(R, baseline: Sequence[float]) -> float:
    """FWT = 1/(T-1) Σ_{i≥1} R[i-1, i] - baseline[i] (0 when T = 1)."""
    R = _matrix(R)
    b = np.asarray(baseline, dtype=float)
    T = len(R)
    if b.shape != (T,):
        raise ValueError(f"baseline must have one entry per task ({T}), got shape {b.shape}")
    if T == 1:
        return 0.0
    return float(np.mean([R[i - 1, i] - b[i] for i in range(1, T)]))


def forgetting(R) -> float:
    """Average forgetting: mean_j<T-1 of (best earlier accuracy on j) - (final accuracy on j)."""
    R = _matrix(R)
    T = len(R)
    if T == 1:
        return 0.0
    return float(np.mean([R[: T - 1, j].max() - R[-1, j] for j in range(T - 1)]))


def min_accuracy(curves: Mapping[int, Sequence[tuple[int, float]]], task_end_steps: Sequence[int]) -> dict[int, float]:
    """min-ACC per earlier task: the lowest accuracy on task k evaluated after task k ended.

    Args:
        curves: task index -> [(global step, accuracy), ...] from continual evaluation.
        task_end_steps: global step at which each task's training ended.

    Returns:
        task index -> min accuracy, for every task but the last that has later evaluations.
    """
    result = {}
    for k in range(len(task_end_steps) - 1):
        later = [acc for step, acc in curves.get(k, ()) if step > task_end_steps[k]]
        if later:
            result[k] = float(min(later))
    return result


def worst_case_accuracy(current_task_accuracy: float, min_accuracies: Sequence[float], k: int) -> float:
    """WC-ACC_k = (1/k)·a_k + (1 - 1/k)·mean(min-ACC of tasks < k); k is 1-based."""
    if k < 1:
        raise ValueError("k is the 1-based number of tasks seen, k ≥ 1")
    if k == 1 or not len(min_accuracies):
        return float(current_task_accuracy)
    return float(current_task_accuracy / k + (1 - 1 / k) * np.mean(min_accuracies))
