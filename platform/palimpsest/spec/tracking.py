"""The `tracking:` section, the same on every job kind: MLflow, TensorBoard and W&B.

    tracking:
      mlflow: {tracking_uri: http://mlflow.internal:5000, experiment: forgetting}   # or `mlflow: true`
      tensorboard: true
      wandb: {mode: offline, project: palimpsest}                                 # or `wandb: true`

No section (the default) tracks nothing. `mlflow: true` and `wandb: true` are short for the
backend with its defaults, `false` for leaving it out. What each backend receives and where
it lands: docs/tracking.md; the code that logs: palimpsest/tracking.py.

Like every path in a resolved spec, MLflow's default store and a local path given as
`tracking_uri` are resolved against the current working directory and stored as an absolute
`file:` URI, so a run folder's spec.yaml logs to the same store from anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from palimpsest.spec.common import Strict

DEFAULT_MLFLOW_STORE = "mlruns"  # beside runs/: relative to the working directory


def local_store_uri(path: str | Path) -> str:
    """The absolute `file:` URI of a local MLflow store folder."""
    return Path(path).expanduser().resolve().as_uri()


def _shorthand(value, model):
    # `mlflow: true` is the backend with its defaults, `mlflow: false` no backend; a mapping is
    # validated as the section itself (a bool never reaches the model: one error, not two).
    if value is True:
        return {}
    if value is False:
        return None
    if value is None or isinstance(value, (dict, model)):
        return value
    raise ValueError(f"expected true, false or a mapping of {', '.join(model.model_fields)} "
                     f"(got {value!r})")


class MlflowTracking(Strict):
    """MLflow: the resolved spec as parameters, metrics.jsonl as metrics with their steps, files as artifacts."""

    tracking_uri: str | None = Field(
        None, validate_default=True, min_length=1,
        description="an MLflow tracking URI (http://host:5000, databricks, sqlite:///abs/mlflow.db) or a local "
                    f"folder; default: a file store in {DEFAULT_MLFLOW_STORE}/ in the working directory. A local "
                    "folder is stored as an absolute file: URI")
    experiment: str | None = Field(None, min_length=1, description="the MLflow experiment; default: the job's name")

    @field_validator("tracking_uri")
    @classmethod
    def _absolute_store(cls, value):
        if value is None:
            return local_store_uri(DEFAULT_MLFLOW_STORE)
        if value.startswith("file:"):
            rest = value[len("file:"):]
            if rest.startswith("//"):  # file:///abs or file://host/abs: already absolute
                return value
            return local_store_uri(rest)
        if "://" in value or value == "databricks" or value.startswith("databricks:"):
            return value
        return local_store_uri(value)  # a plain folder


class WandbTracking(Strict):
    """Weights & Biases through Ray's integration: offline by default (files to sync later)."""

    mode: Literal["offline", "online"] = Field(
        "offline", description="offline: the run is written under the run folder's wandb/ and sent later with "
                               "`wandb sync`; online: sent as it runs (needs `wandb login` or WANDB_API_KEY)")
    project: str | None = Field(None, min_length=1, description="the W&B project; default: the job's name")
    entity: str | None = Field(None, min_length=1, description="the W&B team or user; default: your default entity")


class TrackingSpec(Strict):
    """Experiment tracking: where a run's parameters, metrics and files also go (besides the run folder)."""

    mlflow: MlflowTracking | None = Field(None, description="log to MLflow (true: the defaults)")
    tensorboard: bool = Field(False, description="write TensorBoard event files under the run folder's "
                                                 "tensorboard/ (a search: under each trial's)")
    wandb: WandbTracking | None = Field(None, description="log to Weights & Biases (true: offline, the defaults)")

    @field_validator("mlflow", "wandb", mode="before")
    @classmethod
    def _shorthand(cls, value, info):
        return _shorthand(value, MlflowTracking if info.field_name == "mlflow" else WandbTracking)

    @property
    def enabled(self) -> bool:
        return self.mlflow is not None or self.tensorboard or self.wandb is not None
