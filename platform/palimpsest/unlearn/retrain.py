"""`retrain`: the gold standard — train from the target's starting point on what remains.

Every request is served by training the model the target was trained from (a preset's
seeded init, or the pretrained base) on the retain set of that point (everything not
forgotten so far), with the target's own training recipe (`target.training`). This is
exactly how the job's retain model is made (TOFU's "retain model"), so its cost is the
yardstick every other method's cost ratio divides by.
"""

from __future__ import annotations

from palimpsest.train.methods import MethodInfo
from palimpsest.unlearn.base import RetainTraining

METHOD = MethodInfo(
    name="retrain", family="unlearning", implementation="Retrain",
    summary="train the target's starting model on what remains, with the target's recipe (the gold standard)",
    paper="Maini et al., 2024 (TOFU's retain model)",
    backends=("ddp", "zero0", "zero1", "zero2"),
    backend_reason="each request is evaluated on the whole weights, which ZeRO-3 partitions",
)


class Retrain(RetainTraining):
    start_from = "base"

    def schedule(self, unlearning, original):
        return original
