"""Typed job specs: one pydantic model per job kind (`spec/<kind>.py`), chosen by `kind`.

`load_spec` turns a YAML file (plus `--set a.b=v` overrides) into a typed spec or
raises `SpecError` listing every problem with its field path; `palimpsest.kinds` lists
the kinds. This package imports no torch and no ray so `palimpsest validate` answers in
well under a second.
"""

from palimpsest.spec.base import MethodSpec
from palimpsest.spec.common import (
    TOFU_SPLITS, DeepSpeedSpec, EvalSpec, FactWorldData, FileData, HFData, LoraSpec, ModelSpec, ScalingSpec,
    SpecError, TrainingSpec,
)
from palimpsest.spec.continual import ContinualJob, DatasetsStream, FactWorldStream
from palimpsest.spec.loading import apply_overrides, dump_spec, load_spec, parse_spec
from palimpsest.spec.privacy_sweep import PrivacySweepJob
from palimpsest.spec.train import TrainJob
from palimpsest.spec.unlearn import UnlearnJob

__all__ = [
    "TOFU_SPLITS", "DeepSpeedSpec", "EvalSpec", "FactWorldData", "FileData", "HFData", "LoraSpec", "ModelSpec",
    "ScalingSpec", "SpecError", "TrainingSpec", "ContinualJob", "DatasetsStream", "FactWorldStream", "MethodSpec",
    "PrivacySweepJob", "TrainJob", "UnlearnJob", "apply_overrides", "dump_spec", "load_spec", "parse_spec",
]
