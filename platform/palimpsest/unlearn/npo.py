"""`npo`: Negative Preference Optimization against the model as the request began.

Zhang, Lin, Bai & Mei, "Negative Preference Optimization: From Catastrophic Collapse to
Effective Unlearning", 2024, eq. (3), on each forget item's summed answer log-likelihood
(the authors' `get_batch_loss` sums token losses per sequence):
    L_NPO = −(2/β)·E[log σ(−β·(log π_θ(y|x) − log π_ref(y|x)))],
with β = 0.1 (the authors' TOFU config). The reference π_ref is a frozen copy of the
model as the current request began (for the first request: the target model). The
retain term α·NLL(retain) with α = 1 is the paper's NPO+RT and open-unlearning's NPO
default; set `retain_weight: 0` for NPO alone.
"""

from __future__ import annotations

import torch

from palimpsest.train.methods import (
    WHOLE_WEIGHTS_BACKENDS, MethodInfo, forget_weight, inverse_temperature, retain_weight,
)
from palimpsest.unlearn.base import FORGET, FrozenStart, UnlearningMethod, answer_rows
from palimpsest.unlearn.objectives import npo_loss

METHOD = MethodInfo(
    name="npo", family="unlearning", implementation="NPO",
    summary="−(2/β)·log σ(−β·log(π_θ/π_ref)) on forget items + α·NLL(retain); π_ref = the model as the request began",
    paper="Zhang et al., 2024",
    params=(
        inverse_temperature(0.1),
        forget_weight(1.0, "γ, the weight of the NPO term"),
        retain_weight(1.0, "α, the weight of the retain NLL (0: NPO without RT)"),
    ),
    **WHOLE_WEIGHTS_BACKENDS,
    projectable=True,
)


class NPO(UnlearningMethod):
    def __init__(self, beta: float, forget_weight: float, retain_weight: float):
        self.beta, self.forget_weight, self.retain_weight = beta, forget_weight, retain_weight
        self.reference = FrozenStart()

    def forget_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        log_likelihood, _ = micro.sequence_log_likelihood(FORGET)
        reference, _ = answer_rows(micro, FORGET, self.reference.model)
        total = npo_loss(log_likelihood, reference, self.beta, reduce="sum")
        return self.forget_weight * micro.item_mean(FORGET, total)
