"""`dp2u`: DP2Unlearning — fine-tune the ε-DP base, without noise, on what remains.

Mahmud et al., "DP2Unlearning: An Efficient and Guaranteed Unlearning Framework for
LLMs", 2025, as the authors' code runs it (github.com/tamimalmahmud/DP2Unlearning:
`Train_dp_SGD.py`, `FT_BaseModel.py`). A DP base is trained with (ε, δ)-DP on all the
data (the job's `target.privacy`), so any one item's influence on it is bounded by ε; the
deployed target is that base fine-tuned on all the data without noise (what the other
methods unlearn; see `runners.unlearn_models.target_model`). A request is served by
fine-tuning the DP BASE (not the deployed target, nor the model after earlier requests)
on the retain set of that point, without noise, for `fraction` of retraining's steps with
the target's recipe otherwise. The authors fine-tune for 5 epochs where retraining takes
10: `fraction` 0.5. Their cost claim is that ratio per request; the DP base's training is
paid once, which the summary shows amortised beside it (`flops_ratio_with_base`).
"""

from __future__ import annotations

from dataclasses import replace

from palimpsest.train.methods import WHOLE_WEIGHTS_BACKENDS, MethodInfo, Param
from palimpsest.unlearn.base import RetainTraining

METHOD = MethodInfo(
    name="dp2u", family="unlearning", implementation="DP2Unlearning",
    summary="fine-tune the ε-DP base on what remains, without noise, for a fraction of retraining's steps",
    paper="Mahmud et al., 2025",
    params=(Param("fraction", "float", 0.5, "share of retraining's steps (the authors: 5 of 10 epochs)", low=0,
                  high=1, low_open=True),),
    **WHOLE_WEIGHTS_BACKENDS,
)


class DP2Unlearning(RetainTraining):
    start_from = "dp_base"

    def __init__(self, fraction: float):
        self.fraction = fraction

    def schedule(self, unlearning, original):
        steps = max(1, round(self.fraction * original.steps))
        return replace(original, steps=steps, warmup_steps=min(original.warmup_steps, steps - 1))
