"""What the Ray Train job kinds share: `JobBase`, method entries, and the run name's pattern.

Field-level rules live on the models; rules that tie sections together live in
`spec/rules.py` (`cross_problems`); each kind's model is in `spec/<kind>.py`, and
`palimpsest/kinds.py` lists the kinds.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator

from palimpsest.catalog import methods_of
from palimpsest.spec.common import EvalSpec, ModelSpec, ScalingSpec, Strict, TrainingSpec, _suggest
from palimpsest.spec.search import FINISHED, TuneSpec
from palimpsest.spec.tracking import TrackingSpec
from palimpsest.storage import check_storage_path

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# The run name and the tracking section, as each kind declares them (`name: RunName = "<kind>"`).
RunName = Annotated[str, Field(pattern=NAME_PATTERN, description="run name (folder prefix)")]
Tracking = Annotated[TrackingSpec | None, Field(description="experiment tracking: MLflow, TensorBoard, W&B "
                                                            "(docs/tracking.md)")]


class JobBase(Strict):
    """What every Ray Train job kind has: its name, seed, model, training, scaling, evaluation, storage, search."""

    name: RunName = "run"
    seed: int = Field(0, ge=0, description="seeds data order, model init and the fact world")
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    max_failures: int = Field(0, ge=0, description="worker-group restarts from the last checkpoint")
    storage_path: str | None = Field(None, description="where Ray Train writes checkpoints: an absolute path every "
                                                       "node mounts, or a URI (s3://, gs://); default: inside the "
                                                       "run folder")
    tune: TuneSpec | None = Field(None, description="search this job's fields with Ray Tune (palimpsest tune)")
    tracking: Tracking = None

    @field_validator("storage_path")
    @classmethod
    def _storage(cls, value):
        return check_storage_path(value)

    # A search over this job (spec/tuning.py asks each kind its own rules) ---------------------
    def search_document(self) -> dict:
        """The resolved job without its tune section: what each trial of a search starts from."""
        document = self.model_dump(mode="json")
        document.pop("tune", None)
        return document

    def units_done(self, report: dict) -> int:
        """How many of its units (`trial_units`) a trial had done at one of its reports (a final one: all)."""
        return self.trial_units() if report.get(FINISHED) else self.units_reported(report)

    def search_problems(self) -> list[str]:
        """What this kind refuses in its tune: section, beyond the rules every kind shares."""
        return []

    def reads_training_data(self, metric: str) -> bool:
        """Whether the objective `metric` scores the training data without noise (a private search must not
        choose by it unless allowed)."""
        return False

    def _one_method(self) -> list[str]:
        if len(self.methods) != 1:
            return [f"methods: a search tunes one method ({len(self.methods)} given); its objective is that "
                    "method's"]
        return []


def private_clipping(job):
    """A private job clips per example (privacy.max_grad_norm): its resolved spec says there is no global clipping."""
    if job.privacy is not None and job.training.max_grad_norm is not None:
        job.training.max_grad_norm = None
    return job


class MethodSpec(Strict):
    """A continual-learning method by registered name, with its parameters."""

    family: ClassVar[str] = "continual"
    name: str
    params: dict[str, Any] = Field(default_factory=dict, description="the method's parameters (see README)")

    @field_validator("name")
    @classmethod
    def _known(cls, value):
        known = methods_of(cls.family)
        if value not in known:
            raise ValueError(f"unknown {cls.family} method '{value}'" + _suggest(value, list(known)))
        return value


def method_entry(value):
    return {"name": value} if isinstance(value, str) else value


def method_entries(value):
    """`methods: [npo, {name: rmu, params: ...}]`: a bare name is a mapping with defaults."""
    return [method_entry(v) for v in value] if isinstance(value, list) else value


