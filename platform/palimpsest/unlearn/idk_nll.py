"""`idk_nll`: teach "I don't know" for the forget set's questions, keep what remains.

TOFU's "idk" baseline (Maini et al., 2024, §5: L = L(S_R) + L(S_F^idk)), as open-unlearning
releases it ("IdkNLL" checkpoints: its GradDiff trainer with `TOFU_QA_forget_idk`,
`return_original: false` and γ = −1): descent on each forget question paired with an "I don't
know" answer drawn uniformly from the list (`unlearn/idk.py`; a new draw every epoch), plus
α × the retain NLL, each the mean over its answer tokens. α = 1.
"""

from __future__ import annotations

import torch

from palimpsest.train.batching import TokenizedQA
from palimpsest.train.hooks import StepBatch
from palimpsest.train.methods import WHOLE_WEIGHTS_BACKENDS, MethodInfo, Param, retain_weight
from palimpsest.unlearn.base import RETAIN, UnlearningMethod
from palimpsest.unlearn.idk import IDK, draw_refusals

METHOD = MethodInfo(
    name="idk_nll", family="unlearning", implementation="IdkNLL",
    summary="L = NLL(forget questions → \"I don't know\") + α·NLL(retain)", paper="Maini et al., 2024 (TOFU)",
    params=(
        retain_weight(),
        Param("idk_path", "str", None, "a file of \"I don't know\" answers, one per line (TOFU's idontknow.jsonl); "
                                       "null: the built-in 40", nullable=True),
    ),
    **WHOLE_WEIGHTS_BACKENDS,
    projectable=True,
)


class IdkNLL(UnlearningMethod):
    def __init__(self, retain_weight: float, idk_path: str | None):
        self.retain_weight, self.idk_path = retain_weight, idk_path

    def batch(self, ctx, step: int) -> StepBatch:
        parts = {IDK: [TokenizedQA(q.prompt, answer) for q, answer in draw_refusals(ctx, step)]}
        if self.uses_retain():
            parts[RETAIN] = ctx.pool_batch(RETAIN, step)
        return StepBatch(parts)

    def forget_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        return micro.nll(IDK)
