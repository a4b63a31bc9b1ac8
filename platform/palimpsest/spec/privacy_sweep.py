"""`kind: privacy_sweep` — one train job at several ε: membership-inference AUC and accuracy against ε."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from palimpsest.spec.base import RunName, Tracking
from palimpsest.spec.common import PrivacySettings, Strict
from palimpsest.spec.train import TrainJob
from palimpsest.spec.search import TuneSpec


class PrivacySweepJob(Strict):
    """`kind: privacy_sweep` — one train job at several ε (null: not private): MIA AUC and accuracy against ε."""

    kind: Literal["privacy_sweep"]
    name: RunName = "privacy-sweep"
    job: TrainJob = Field(description="the train job run at every ε (without a privacy section)")
    privacy: PrivacySettings = Field(default_factory=PrivacySettings, description="DP-SGD settings shared by "
                                                                                  "every private point")
    epsilons: list[Annotated[float, Field(gt=0, allow_inf_nan=False)] | None] = Field(
        min_length=1, description="the budgets to train at; null trains without privacy (the reference point)")
    private_lr: float | None = Field(
        None, gt=0, description="learning rate of the private points (DP-SGD's clipped, noisy updates usually "
                                "need a larger one than non-private training); default: job.training.lr. The "
                                "not-private point keeps job.training.lr, so neither side is handicapped")
    tune: TuneSpec | None = Field(None, description="refused: a privacy sweep is a sweep already")
    tracking: Tracking = None

    @field_validator("epsilons")
    @classmethod
    def _distinct(cls, value):
        if len(set(value)) != len(value):
            raise ValueError("each ε once")
        return value

    @field_validator("job")
    @classmethod
    def _no_privacy(cls, value):
        if value.tracking is not None:
            raise ValueError("give tracking: on the sweep, not in job (the sweep is the run that is tracked)")
        if value.privacy is not None:
            raise ValueError("give the DP settings in the sweep's privacy section and the budgets in epsilons, "
                             "not in job.privacy")
        return value

    # What the CLI reads of any job: the inner job's.
    seed = property(lambda self: self.job.seed)
    scaling = property(lambda self: self.job.scaling)
    storage_path = property(lambda self: self.job.storage_path)

    def points(self) -> list[tuple[str, float | None, dict]]:
        """(label, ε, train-job document) per point, in the order given."""
        found = []
        for epsilon in self.epsilons:
            document = self.job.model_dump(mode="json")
            if epsilon is not None:  # per-example clipping replaces the job's global clipping
                document["privacy"] = {**self.privacy.model_dump(), "epsilon": epsilon}
                document["training"]["max_grad_norm"] = None
                if self.private_lr is not None:
                    document["training"]["lr"] = self.private_lr
            found.append(("not-private" if epsilon is None else f"epsilon-{epsilon:g}", epsilon, document))
        return found
