"""`grad_diff`: gradient difference — ascend on the forget set, descend on what remains.

Liu, Liu & Stone, "Continual Learning and Private Unlearning", CoLLAs 2022; TOFU's
baseline. L = γ·(−NLL(forget)) + α·NLL(retain), each the mean over its answer tokens;
γ = α = 1 as open-unlearning's GradDiff config.
"""

from __future__ import annotations

import torch

from palimpsest.train.methods import WHOLE_WEIGHTS_BACKENDS, MethodInfo, forget_weight, retain_weight
from palimpsest.unlearn.base import FORGET, UnlearningMethod

METHOD = MethodInfo(
    name="grad_diff", family="unlearning", implementation="GradDiff",
    summary="L = γ·(−NLL(forget)) + α·NLL(retain)", paper="Liu, Liu & Stone, 2022",
    params=(
        forget_weight(1.0, "γ, the weight of the ascent term"),
        retain_weight(),
    ),
    **WHOLE_WEIGHTS_BACKENDS,
    projectable=True,
)


class GradDiff(UnlearningMethod):
    def __init__(self, forget_weight: float, retain_weight: float):
        self.forget_weight, self.retain_weight = forget_weight, retain_weight

    def forget_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        return -self.forget_weight * micro.nll(FORGET)
