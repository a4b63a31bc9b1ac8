"""Typed job specs: one pydantic model per job kind, chosen by `kind`.

`load_spec` turns a YAML file (plus `--set a.b=v` overrides) into a typed spec or
raises `SpecError` listing every problem with its field path. This package imports
no torch and no ray so `palimpsest validate` answers in well under a second.
"""

from palimpsest.spec.common import (
    TOFU_SPLITS, DeepSpeedSpec, EvalSpec, FactWorldData, FileData, HFData, LoraSpec, ModelSpec, ScalingSpec,
    SpecError, TrainingSpec,
)
from palimpsest.spec.jobs import (
    JOB_KINDS, ContinualJob, DatasetsStream, FactWorldStream, JobSpec, MethodSpec, PrivacySweepJob, TrainJob,
)
from palimpsest.spec.loading import apply_overrides, dump_spec, load_spec, parse_spec

__all__ = [
    "TOFU_SPLITS", "DeepSpeedSpec", "EvalSpec", "FactWorldData", "FileData", "HFData", "LoraSpec", "ModelSpec",
    "ScalingSpec", "SpecError", "TrainingSpec", "JOB_KINDS", "ContinualJob", "DatasetsStream", "FactWorldStream",
    "JobSpec", "MethodSpec", "PrivacySweepJob", "TrainJob", "apply_overrides", "dump_spec", "load_spec", "parse_spec",
]
