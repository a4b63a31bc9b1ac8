"""`dp2u`: DP2Unlearning — an ε-DP target, then non-private fine-tuning on what remains.

Mahmud et al., "DP2Unlearning: An Efficient and Guaranteed Unlearning Framework for
LLMs", 2025. The target is trained with (ε, δ)-DP (the job's `target.privacy`), so any
one item's influence on it is bounded by ε. A request is served by fine-tuning that DP
target (not the model after earlier requests) on the retain set of that point, without
noise, for `fraction` of retraining's steps with the target's recipe otherwise. The
authors fine-tune for 5 epochs where retraining takes 10: `fraction` 0.5.
"""

from __future__ import annotations

from dataclasses import replace

from palimpsest.train.methods import MethodInfo, Param
from palimpsest.unlearn.base import RetainTraining

METHOD = MethodInfo(
    name="dp2u", family="unlearning", implementation="DP2Unlearning",
    summary="fine-tune the ε-DP target on what remains, without noise, for a fraction of retraining's steps",
    paper="Mahmud et al., 2025",
    params=(Param("fraction", "float", 0.5, "share of retraining's steps (the authors: 5 of 10 epochs)", low=0,
                  high=1, low_open=True),),
    backends=("ddp", "zero0", "zero1", "zero2"),
    backend_reason="each request is evaluated on the whole weights, which ZeRO-3 partitions",
)


class DP2Unlearning(RetainTraining):
    start_from = "target"

    def __init__(self, fraction: float):
        self.fraction = fraction

    def schedule(self, unlearning, original):
        steps = max(1, round(self.fraction * original.steps))
        return replace(original, steps=steps, warmup_steps=min(original.warmup_steps, steps - 1))
