"""`retrain`: the gold standard — train from the target's starting point on what remains.

Every request is served by training the model the target was trained from (a preset's
seeded init, or the pretrained base) on the retain set of that point (everything not
forgotten so far), with the target's own training recipe (`target.training`). That is
how the job's retain model is made (TOFU's "retain model"), so its cost is the yardstick
every other method's cost ratio divides by.

`seed_offset` (default 1) retrains with another seed than the retain model's: another
initialisation (a preset; a pretrained base's weights are what they are) and another
order of the retain batches. Its forget quality is then the noise floor of the metric —
what a second retraining scores against the first — instead of 1 by construction.
`seed_offset: 0` reproduces the retain model exactly (the job's retain models are
trained that way).
"""

from __future__ import annotations

from palimpsest.train.hooks import LoopContext, StepBatch
from palimpsest.train.methods import WHOLE_WEIGHTS_BACKENDS, MethodInfo, Param
from palimpsest.unlearn.base import RETAIN, RetainTraining

METHOD = MethodInfo(
    name="retrain", family="unlearning", implementation="Retrain",
    summary="train the target's starting model on what remains, with the target's recipe (the gold standard)",
    paper="Maini et al., 2024 (TOFU's retain model)",
    params=(Param("seed_offset", "int", 1, "0: the retain model's seed (reproduces it); another: a second "
                                           "retraining with that seed offset (init and batch order), whose forget "
                                           "quality is the metric's noise floor", low=0, high=1_000_000),),
    **WHOLE_WEIGHTS_BACKENDS,
)


class Retrain(RetainTraining):
    start_from = "base"

    def __init__(self, seed_offset: int = 1):
        self.seed_offset = seed_offset

    def schedule(self, unlearning, original):
        return original

    def before_task(self, ctx: LoopContext) -> None:
        if not self.seed_offset:
            super().before_task(ctx)
            return
        from palimpsest.models import build_model

        base = ctx.models[self.start_from]
        ctx.model = build_model({**base, "seed": base["seed"] + self.seed_offset}).to(ctx.device)

    def batch(self, ctx: LoopContext, step: int) -> StepBatch:
        return StepBatch({RETAIN: ctx.pool_batch(RETAIN, step, stream=self.seed_offset)})
