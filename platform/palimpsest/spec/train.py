"""`kind: train` — fine-tune a model on one dataset and evaluate it (optionally with DP-SGD)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from palimpsest.spec.base import NAME_PATTERN, JobBase, private_clipping
from palimpsest.spec.common import DataSpec, PrivacySpec


class TrainJob(JobBase):
    """`kind: train` — fine-tune a model on one dataset and evaluate it."""

    kind: Literal["train"]
    name: str = Field("train", pattern=NAME_PATTERN, description="run name (folder prefix)")
    data: DataSpec
    privacy: PrivacySpec | None = Field(None, description="train with (ε, δ)-DP (DP-SGD); default: not private")

    _no_global_clipping = model_validator(mode="after")(lambda self: private_clipping(self))

    # What a trial of a search reports, per evaluation (spec/tuning.py: units, units_done).
    def trial_units(self) -> int:
        every = self.eval.eval_every
        return (self.training.steps - 1) // every + 1 if every else 1

    def units_done(self, report: dict) -> int:
        return report["step"] // self.eval.eval_every if "step" in report and self.eval.eval_every else 0
