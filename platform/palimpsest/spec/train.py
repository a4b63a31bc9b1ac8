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

    def units_reported(self, report: dict) -> int:
        return report["step"] // self.eval.eval_every if "step" in report and self.eval.eval_every else 0

    def evaluated_sets(self) -> list[str]:
        """The sets this job evaluates (the names of summary.json's `final`)."""
        data = self.data
        if data.source == "factworld":
            if not self.eval.holdout or data.split == "holdout":
                return ["train"]
            return ["train", "holdout"] + (["holdout_rules"] if data.rules else [])
        has_eval = data.eval_path if data.source == "file" else data.eval_split
        return ["train", "eval"] if has_eval else ["train"]

    def search_problems(self) -> list[str]:
        problems = []
        have = self.evaluated_sets()
        for metric in self.tune.metrics:
            if metric.startswith("final.") and metric.split(".")[1] not in have:
                problems.append(f"tune.metric: {metric}: this job evaluates {', '.join(have)} only")
        if self.tune.scheduler != "fifo" and self.eval.eval_every is None:
            problems.append(f"eval.eval_every: {self.tune.scheduler} needs results while a trial trains; set it")
        return problems

    def reads_training_data(self, metric: str) -> bool:
        return metric.startswith(("final.train.", "mia."))
