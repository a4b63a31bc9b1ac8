"""Job specs, one model per kind; `JOB_KINDS` is the union, grown one kind per capability."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from palimpsest.catalog import CONTINUAL_METHODS
from palimpsest.spec.common import (
    DataSpec, EvalSpec, FileData, HFData, ModelSpec, ScalingSpec, Strict, TrainingSpec, _existing_path, _suggest,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Job(Strict):
    name: str = Field("run", pattern=NAME_PATTERN, description="run name (folder prefix)")
    seed: int = Field(0, ge=0, description="seeds data order, model init and the fact world")
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    max_failures: int = Field(0, ge=0, description="worker-group restarts from the last checkpoint")
    storage_path: str | None = Field(None, description="Ray storage for training checkpoints; default: inside the run folder")

    @model_validator(mode="after")
    def _batch_divides(self):
        per_step = self.scaling.num_workers * self.training.grad_accum
        if self.training.batch_size % per_step:
            raise ValueError(
                f"training.batch_size: {self.training.batch_size} must be a multiple of "
                f"scaling.num_workers × training.grad_accum ({per_step})"
            )
        if self.model.lora is not None and self.training.backend == "deepspeed":
            raise ValueError("training.backend: LoRA (model.lora) runs on the ddp backend only")
        return self


class TrainJob(_Job):
    """`kind: train` — fine-tune a model on one dataset and evaluate it."""

    kind: Literal["train"]
    name: str = Field("train", pattern=NAME_PATTERN, description="run name (folder prefix)")
    data: DataSpec


# ----------------------------------------------------------------------------- continual


class FactWorldStream(Strict):
    """A stream of fact-world tasks: disjoint groups of entities (or of attributes)."""

    source: Literal["factworld"]
    seed: int | None = Field(None, description="world seed; default: the job's seed")
    num_entities: int = Field(30, ge=2, le=100_000)
    attributes_per_entity: int = Field(5, ge=1, le=10)
    num_tasks: int = Field(3, ge=1, le=100)
    by: Literal["entity", "attribute"] = "entity"
    general_samples: int = Field(64, ge=0, description="general-corpus sentences: general loss and GeRe replay")

    @model_validator(mode="after")
    def _enough_groups(self):
        groups = self.num_entities if self.by == "entity" else self.attributes_per_entity
        if self.num_tasks > groups:
            raise ValueError(f"stream.num_tasks: {self.num_tasks} tasks need at least as many {self.by} groups "
                             f"(have {groups})")
        return self


class DatasetsStream(Strict):
    """One dataset per task: local files or `datasets.load_dataset` names."""

    source: Literal["datasets"]
    tasks: list[Annotated[Union[FileData, HFData], Field(discriminator="source")]] = Field(min_length=1)
    general_path: str | None = Field(None, description="text file, one general sentence per line")

    @field_validator("general_path")
    @classmethod
    def _exists(cls, value):
        return None if value is None else _existing_path(value, "general text file")


StreamSpec = Annotated[Union[FactWorldStream, DatasetsStream], Field(discriminator="source")]


class MethodSpec(Strict):
    """A continual-learning method by registered name, with its parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the method")

    @field_validator("name")
    @classmethod
    def _known(cls, value):
        if value not in CONTINUAL_METHODS:
            raise ValueError(f"unknown continual method '{value}'" + _suggest(value, CONTINUAL_METHODS))
        return value


WEIGHT_EDITING_METHODS = ("fpf",)
ZERO3_METHODS = ("naive", "joint", "replay")  # they only choose batches
OWN_BACKWARD_METHODS = ("ewc",)


def _method_entry(value):
    return {"name": value} if isinstance(value, str) else value


class ContinualJob(_Job):
    """`kind: continual` — fine-tune on a stream of tasks with one or more CL methods; measure forgetting."""

    kind: Literal["continual"]
    name: str = Field("continual", pattern=NAME_PATTERN, description="run name (folder prefix)")
    stream: StreamSpec
    methods: list[MethodSpec] = Field(min_length=1, description="compared on the same stream and seed")

    @field_validator("methods", mode="before")
    @classmethod
    def _names_or_mappings(cls, value):
        return [_method_entry(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _unique_methods(self):
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError("methods: each method may appear once")
        if "lora" in names and self.model.lora is not None:
            raise ValueError("methods: the lora method adds its own adapters per task; remove model.lora")
        no_general = (self.stream.source == "datasets" and not self.stream.general_path) or (
            self.stream.source == "factworld" and self.stream.general_samples == 0)
        if "gere" in names and no_general:
            raise ValueError("methods: gere replays general samples; give stream.general_path "
                             "(datasets) or stream.general_samples > 0 (factworld)")
        if self.training.backend == "deepspeed":
            # ZeRO keeps its own master weights and writes them back after each step:
            # a method that edits the weights outside the optimizer would be overwritten.
            edits_weights = [n for n in names if n in WEIGHT_EDITING_METHODS]
            if edits_weights:
                raise ValueError(f"methods: {', '.join(edits_weights)} update weights outside the optimizer and "
                                 "need training.backend: ddp")
            # Under ZeRO-3 a rank holds a shard of each weight: methods that read weights
            # (penalties, teachers, Fishers, adapters) would see empty tensors.
            # EWC's Fisher comes from backward passes outside the training step; from stage 2
            # on, ZeRO's gradient hooks take those gradients (and issue collectives) instead.
            outside_backward = [n for n in names if n in OWN_BACKWARD_METHODS]
            if self.training.deepspeed.zero_stage >= 2 and outside_backward:
                raise ValueError(f"methods: {', '.join(outside_backward)} run their own backward passes, which "
                                 "ZeRO-2/3 gradient hooks intercept; use zero_stage ≤ 1 or backend ddp")
            reads_weights = [n for n in names if n not in ZERO3_METHODS]
            if self.training.deepspeed.zero_stage == 3 and reads_weights:
                raise ValueError(f"methods: {', '.join(reads_weights)} read the weights, which ZeRO-3 partitions; "
                                 f"with zero_stage 3 use {', '.join(ZERO3_METHODS)} (or zero_stage ≤ 2)")
        return self


JOB_KINDS: dict[str, type[Strict]] = {"train": TrainJob, "continual": ContinualJob}
JobSpec = Union[TrainJob, ContinualJob]
