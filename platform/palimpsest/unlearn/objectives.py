"""Forget objectives on per-sequence log-likelihoods, as the papers write them (the methods build on these).

- NPO, Zhang et al., "Negative Preference Optimization: From Catastrophic Collapse to
  Effective Unlearning", 2024, eq. (3): L = −(2/β) · E[log σ(−β · log(π_θ(y|x) / π_ref(y|x)))].
  Its gradient is 2σ(β·(log π_θ − log π_ref)) · ∇log π_θ: gradient ascent's, weighted down
  as the model moves away from the reference (weight 1 at the reference itself).
- SimNPO, Fan et al., "Simplicity Prevails: Rethinking Negative Preference Optimization for
  LLM Unlearning", 2024, eq. (5): reference-free and length-normalised,
  L = −(2/β) · E[log σ(−(β/|y|) · log π_θ(y|x) − γ)]. (open-unlearning's `delta` is γ/β.)

`log_likelihood` is log π(answer + eos | question), summed over tokens; `lengths` the
token counts (`MicroBatch.sequence_log_likelihood` gives both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def npo_loss(log_likelihood: torch.Tensor, reference_log_likelihood: torch.Tensor, beta: float, *,
             reduce: str = "mean") -> torch.Tensor:
    """NPO loss over the items, their mean (or `reduce="sum"`); β > 0; the reference carries no gradient."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    log_ratio = log_likelihood - reference_log_likelihood.detach()
    return _reduce(-2.0 / beta * F.logsigmoid(-beta * log_ratio), reduce)


def simnpo_loss(log_likelihood: torch.Tensor, lengths: torch.Tensor, beta: float, gamma: float = 0.0, *,
                reduce: str = "mean") -> torch.Tensor:
    """SimNPO loss over the items (mean, or `reduce="sum"`): NPO without a reference, per-token, margin γ."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    per_token = log_likelihood / lengths.clamp(min=1).to(log_likelihood.dtype)
    return _reduce(-2.0 / beta * F.logsigmoid(-beta * per_token - gamma), reduce)


def _reduce(per_item: torch.Tensor, how: str) -> torch.Tensor:
    if how not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {how!r}")
    return per_item.mean() if how == "mean" else per_item.sum()
