"""`kind: continual` — a stream of tasks, one or more continual-learning methods, forgetting measured."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from palimpsest.spec.base import NAME_PATTERN, JobBase, MethodSpec, method_entries, private_clipping
from palimpsest.spec.common import EvalSpec, FileData, HFData, PrivacySpec, Strict, _existing_path


class FactWorldStream(Strict):
    """A stream of fact-world tasks: disjoint groups of entities (or of attributes)."""

    source: Literal["factworld"]
    seed: int | None = Field(None, description="world seed; default: the job's seed")
    num_entities: int = Field(30, ge=2, le=100_000)
    attributes_per_entity: int = Field(5, ge=1, le=10)
    num_tasks: int = Field(3, ge=1, le=100)
    by: Literal["entity", "attribute"] = "entity"
    general_samples: int = Field(64, ge=0, description="general sentences never trained on: the general loss")
    general_replay_samples: int = Field(64, ge=0, description="other general sentences methods may train on (GeRe)")
    rules: int = Field(0, ge=0, le=3, description="rule facts per entity (fact world rules); with rules, 10% more "
                                                  "people (at least one) are generated and never trained on, and "
                                                  "each method's rule_accuracy scores their rule facts")

    @model_validator(mode="after")
    def _enough_groups(self):
        groups = self.num_entities if self.by == "entity" else self.attributes_per_entity
        if self.rules and self.by != "entity":
            raise ValueError("rules: rule facts go with their people's tasks; use by: entity")
        if self.num_tasks > groups:
            raise ValueError(f"num_tasks: {self.num_tasks} tasks need at least as many {self.by} groups "
                             f"(have {groups})")
        return self


class DatasetsStream(Strict):
    """One dataset per task: local files or `datasets.load_dataset` names, each with its own eval set."""

    source: Literal["datasets"]
    tasks: list[Annotated[Union[FileData, HFData], Field(discriminator="source")]] = Field(min_length=1)
    eval_on_train: bool = Field(False, description="measure R on a task's training examples when it has no "
                                                   "eval_path / eval_split (GEM's R is test accuracy)")
    general_path: str | None = Field(None, description="text file, one general sentence per line; split into "
                                                       "replay and evaluation halves unless general_eval_path is given")
    general_eval_path: str | None = Field(None, description="general sentences for the general loss only")

    @field_validator("general_path", "general_eval_path")
    @classmethod
    def _exists(cls, value):
        return None if value is None else _existing_path(value, "general text file")

    @model_validator(mode="after")
    def _eval_sets(self):
        missing = [i for i, task in enumerate(self.tasks)
                   if not (task.eval_path if task.source == "file" else task.eval_split)]
        if missing and not self.eval_on_train:
            raise ValueError(f"tasks {missing} have no eval set; give each an eval_path (file) or eval_split (hf), or "
                             "set stream.eval_on_train: true to measure them on their training examples")
        return self


StreamSpec = Annotated[Union[FactWorldStream, DatasetsStream], Field(discriminator="source")]


class ContinualEvalSpec(EvalSpec):
    """Continual evaluation: seen tasks every `eval_every` steps (min-ACC, WC-ACC), every task at task ends."""

    eval_every: int | Literal["auto"] | None = Field(
        "auto", description="steps between evaluations of the seen tasks; auto: a tenth of a task; null: task ends "
                            "only (min-ACC and WC-ACC are then not measured)")
    fwt_baseline: Literal["random_init", "initial"] = Field(
        "random_init", description="FWT's b: a random init of the architecture (GEM) or the model the run starts "
                                   "from (differs for pretrained models)")

    @field_validator("eval_every")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, int) and (isinstance(value, bool) or value < 1):
            raise ValueError("must be a positive integer, 'auto' or null")
        return value


class ContinualJob(JobBase):
    """`kind: continual` — fine-tune on a stream of tasks with one or more CL methods; measure forgetting."""

    kind: Literal["continual"]
    name: str = Field("continual", pattern=NAME_PATTERN, description="run name (folder prefix)")
    stream: StreamSpec
    methods: list[MethodSpec] = Field(min_length=1, description="compared on the same stream and seed")
    eval: ContinualEvalSpec = Field(default_factory=ContinualEvalSpec)
    privacy: PrivacySpec | None = Field(None, description="(ε, δ)-DP over the whole stream (DP-SGD); default: "
                                                          "not private")

    _names_or_mappings = field_validator("methods", mode="before")(lambda value: method_entries(value))

    _no_global_clipping = model_validator(mode="after")(lambda self: private_clipping(self))

    @model_validator(mode="after")
    def _resolve_auto(self):
        if self.eval.eval_every == "auto":  # the resolved spec shows the number
            self.eval.eval_every = max(1, self.training.steps // 10)
        return self

    # What a trial of a search reports, per task (spec/tuning.py: units, units_done).
    def trial_units(self) -> int:
        return self.stream.num_tasks if self.stream.source == "factworld" else len(self.stream.tasks)

    def units_reported(self, report: dict) -> int:
        return report["task"] + 1 if "task" in report else 0

    def search_problems(self) -> list[str]:
        return self._one_method()

    def reads_training_data(self, metric: str) -> bool:
        # a fact-world stream's tasks are scored on the facts they trained on: retention is the question there
        return self.stream.source == "factworld" and metric not in ("general_loss", "rule_accuracy", "cost.wall_s")
