"""`satimp`: saturation-importance reweighted gradient ascent.

Yang, Wang, Huang, Liu, Zhang & Han, "Exploring Criteria of Loss Reweighting to Enhance
LLM Unlearning", ICML 2025, as open-unlearning computes it
(`src/trainer/utils.py::compute_satimp_loss`, `configs/trainer/SatImp.yaml`):

    L = −γ · mean_t [ sg(p_t^β1 · (1 − p_t)^β2) · NLL_t ] + α · NLL(retain)

over the forget answer tokens, p_t the model's probability of the true token: the weight
favours tokens still known (saturation, p^β1) but not yet certain (importance,
(1 − p)^β2). Defaults are the config's, which runs: β1 = 5, β2 = 1, γ = 0.1, α = 1
(the method's README says γ = 1, α = 0.1; its yaml, what open-unlearning runs, says
otherwise, and we follow the yaml).
"""

from __future__ import annotations

import torch

from palimpsest.train.methods import WHOLE_WEIGHTS_BACKENDS, MethodInfo, Param, forget_weight, retain_weight
from palimpsest.unlearn.base import UnlearningMethod, weighted_forget_nll

METHOD = MethodInfo(
    name="satimp", family="unlearning", implementation="SatImp",
    summary="L = −γ·mean_t[sg(p_t^β1·(1−p_t)^β2)·NLL_t](forget) + α·NLL(retain)", paper="Yang et al., 2025 (ICML)",
    params=(
        Param("beta1", "float", 5.0, "β1, the power of p_t (saturation)", low=0),
        Param("beta2", "float", 1.0, "β2, the power of 1 − p_t (importance)", low=0),
        forget_weight(0.1, "γ, the weight of the weighted ascent (open-unlearning's yaml)"),
        retain_weight(1.0, "α, the weight of the retain NLL (open-unlearning's yaml)"),
    ),
    **WHOLE_WEIGHTS_BACKENDS,
    projectable=True,
)


class SatImp(UnlearningMethod):
    def __init__(self, beta1: float, beta2: float, forget_weight: float, retain_weight: float):
        self.beta1, self.beta2 = beta1, beta2
        self.forget_weight, self.retain_weight = forget_weight, retain_weight

    def forget_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        p = torch.exp(-micro.token_losses.detach())
        weights = p ** self.beta1 * (1 - p) ** self.beta2
        return -self.forget_weight * weighted_forget_nll(micro, weights)
