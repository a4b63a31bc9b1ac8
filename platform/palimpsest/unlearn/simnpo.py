"""`simnpo`: reference-free, length-normalised NPO.

Fan et al., "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
Unlearning", 2024, eq. (5): L = −(2/β)·E[log σ(−(β/|y|)·log π_θ(y|x) − γ)], no reference
model. Defaults are open-unlearning's SimNPO config: β = 4.5, margin γ = 0 (its `delta`
is γ/β), forget weight 0.125 (its `gamma`), retain NLL weight α = 1.
"""

from __future__ import annotations

import torch

from palimpsest.train.methods import (
    WHOLE_WEIGHTS_BACKENDS, MethodInfo, Param, forget_weight, inverse_temperature, retain_weight,
)
from palimpsest.unlearn.base import FORGET, UnlearningMethod
from palimpsest.unlearn.objectives import simnpo_loss

METHOD = MethodInfo(
    name="simnpo", family="unlearning", implementation="SimNPO",
    summary="−(2/β)·log σ(−(β/|y|)·log π_θ − γ) on forget items (no reference) + α·NLL(retain)",
    paper="Fan et al., 2024",
    params=(
        inverse_temperature(4.5),
        Param("margin", "float", 0.0, "γ, the reward margin (open-unlearning's delta × β)", low=0),
        forget_weight(0.125, "weight of the SimNPO term (open-unlearning's gamma)"),
        retain_weight(),
    ),
    **WHOLE_WEIGHTS_BACKENDS,
    projectable=True,
)


class SimNPO(UnlearningMethod):
    def __init__(self, beta: float, margin: float, forget_weight: float, retain_weight: float):
        self.beta, self.margin = beta, margin
        self.forget_weight, self.retain_weight = forget_weight, retain_weight

    def forget_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        log_likelihood, lengths = micro.sequence_log_likelihood(FORGET)
        total = simnpo_loss(log_likelihood, lengths, self.beta, self.margin, reduce="sum")
        return self.forget_weight * micro.item_mean(FORGET, total)
