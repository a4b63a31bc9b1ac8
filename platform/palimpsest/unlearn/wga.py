"""`wga`: weighted gradient ascent — ascend each forget token's NLL in proportion to how sure the model still is.

Wang, Zhou, Zhou, Shin, Han & Weinberger, "Rethinking LLM Unlearning Objectives: A
Gradient Perspective and Go Beyond", ICLR 2025, as open-unlearning computes it
(`src/trainer/utils.py::compute_wga_loss`, `configs/trainer/WGA.yaml`):

    L = −γ · mean_t [ sg(p_t^β) · NLL_t ] + α · NLL(retain)

over the forget answer tokens (the mean over every answer token of the batch), p_t =
exp(−NLL_t) the model's probability of the true token and sg() stop-gradient: tokens the
model has already forgotten (small p) stop pulling, so the ascent does not run away.
β = γ = α = 1 as the config.
"""

from __future__ import annotations

import torch

from palimpsest.train.methods import WHOLE_WEIGHTS_BACKENDS, MethodInfo, Param, forget_weight, retain_weight
from palimpsest.unlearn.base import UnlearningMethod, weighted_forget_nll

METHOD = MethodInfo(
    name="wga", family="unlearning", implementation="WGA",
    summary="L = −γ·mean_t[sg(p_t^β)·NLL_t](forget) + α·NLL(retain)", paper="Wang et al., 2025 (ICLR)",
    params=(
        Param("beta", "float", 1.0, "β, the power of the token probability that weights its ascent", low=0),
        forget_weight(1.0, "γ, the weight of the weighted ascent"),
        retain_weight(),
    ),
    **WHOLE_WEIGHTS_BACKENDS,
    projectable=True,
)


class WGA(UnlearningMethod):
    def __init__(self, beta: float, forget_weight: float, retain_weight: float):
        self.beta, self.forget_weight, self.retain_weight = beta, forget_weight, retain_weight

    def forget_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        weights = torch.exp(-micro.token_losses.detach()) ** self.beta
        return -self.forget_weight * weighted_forget_nll(micro, weights)
