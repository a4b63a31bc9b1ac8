"""Job specs, one model per kind; `JOB_KINDS` is the union, grown one kind per capability.

Field-level rules live on the models; rules that tie sections together live in
`spec/rules.py` (`cross_problems`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from palimpsest.catalog import methods_of
from palimpsest.spec.bench import BenchJob
from palimpsest.spec.rl import RLJob
from palimpsest.spec.tuning import TuneSpec
from palimpsest.storage import check_storage_path
from palimpsest.spec.common import (
    DataSpec, EvalSpec, FileData, HFData, ModelSpec, PrivacySettings, PrivacySpec, ScalingSpec, Strict, TrainingSpec,
    _existing_path, _suggest,
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
    storage_path: str | None = Field(None, description="where Ray Train writes checkpoints: an absolute path every "
                                                       "node mounts, or a URI (s3://, gs://); default: inside the "
                                                       "run folder")
    tune: TuneSpec | None = Field(None, description="search this job's fields with Ray Tune (palimpsest tune)")

    @field_validator("storage_path")
    @classmethod
    def _storage(cls, value):
        return check_storage_path(value)


def _private_clipping(job):
    """A private job clips per example (privacy.max_grad_norm): its resolved spec says there is no global clipping."""
    if job.privacy is not None and job.training.max_grad_norm is not None:
        job.training.max_grad_norm = None
    return job


class TrainJob(_Job):
    """`kind: train` — fine-tune a model on one dataset and evaluate it."""

    kind: Literal["train"]
    name: str = Field("train", pattern=NAME_PATTERN, description="run name (folder prefix)")
    data: DataSpec
    privacy: PrivacySpec | None = Field(None, description="train with (ε, δ)-DP (DP-SGD); default: not private")

    _no_global_clipping = model_validator(mode="after")(lambda self: _private_clipping(self))


# ----------------------------------------------------------------------------- continual


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


def _method_entry(value):
    return {"name": value} if isinstance(value, str) else value


def _method_entries(value):
    """`methods: [npo, {name: rmu, params: ...}]`: a bare name is a mapping with defaults."""
    return [_method_entry(v) for v in value] if isinstance(value, list) else value


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


class ContinualJob(_Job):
    """`kind: continual` — fine-tune on a stream of tasks with one or more CL methods; measure forgetting."""

    kind: Literal["continual"]
    name: str = Field("continual", pattern=NAME_PATTERN, description="run name (folder prefix)")
    stream: StreamSpec
    methods: list[MethodSpec] = Field(min_length=1, description="compared on the same stream and seed")
    eval: ContinualEvalSpec = Field(default_factory=ContinualEvalSpec)
    privacy: PrivacySpec | None = Field(None, description="(ε, δ)-DP over the whole stream (DP-SGD); default: "
                                                          "not private")

    _names_or_mappings = field_validator("methods", mode="before")(lambda value: _method_entries(value))

    _no_global_clipping = model_validator(mode="after")(lambda self: _private_clipping(self))

    @model_validator(mode="after")
    def _resolve_auto(self):
        if self.eval.eval_every == "auto":  # the resolved spec shows the number
            self.eval.eval_every = max(1, self.training.steps // 10)
        return self


# ----------------------------------------------------------------------------- privacy sweep


class PrivacySweepJob(Strict):
    """`kind: privacy_sweep` — one train job at several ε (null: not private): MIA AUC and accuracy against ε."""

    kind: Literal["privacy_sweep"]
    name: str = Field("privacy-sweep", pattern=NAME_PATTERN, description="run name (folder prefix)")
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

    @field_validator("epsilons")
    @classmethod
    def _distinct(cls, value):
        if len(set(value)) != len(value):
            raise ValueError("each ε once")
        return value

    @field_validator("job")
    @classmethod
    def _no_privacy(cls, value):
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


# ----------------------------------------------------------------------------- unlearn

REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class UnlearnFactWorld(Strict):
    """The fact world's TOFU-format splits: a 10% holdout, the rest trained on and forgotten from."""

    source: Literal["factworld"]
    seed: int | None = Field(None, description="world seed; default: the job's seed")
    num_entities: int = Field(100, ge=3, le=100_000, description="fictitious people (10% are the holdout)")
    attributes_per_entity: int = Field(2, ge=1, le=8, description="facts per person")
    real_authors: int = Field(100, ge=0, le=100_000, description="TOFU's real authors: public people (one famous "
                                                                 "book each) the base learns in a pre-training stage "
                                                                 "before the target is fine-tuned (0: none; else ≥ 4)")
    world_facts: int = Field(100, ge=0, le=100_000, description="TOFU's world facts: public facts (capitals, "
                                                                "mountains) learnt in the same pre-training stage "
                                                                "(0: none; else ≥ 4)")

    @field_validator("real_authors", "world_facts")
    @classmethod
    def _with_options(cls, value):
        if 0 < value < 4:
            raise ValueError(f"0 (none) or at least 4: each item's 3 wrong options are other items' answers "
                             f"(got {value})")
        return value


class UnlearnFiles(Strict):
    """TOFU-format files in one folder: `<name>.json` (JSON Lines or a JSON list), TOFU's field names.

    The target trains on `full` (else on the union of every forget*/retain* file); a
    request's forget set is `<split>.json`, evaluated with `<split>_perturbed.json` when it
    exists (TOFU keeps the paraphrased and perturbed answers there); the retain side is
    evaluated on `retain_perturbed` when it exists; `holdout` names the never-trained split.
    """

    source: Literal["tofu"]
    path: str = Field(description="folder of TOFU-format .json / .jsonl files")
    holdout: str = Field("holdout10", description="the file (without .json) of people never trained on")

    @field_validator("path")
    @classmethod
    def _folder(cls, value):
        found = _existing_path(value, "TOFU data folder")
        if not Path(found).is_dir():
            raise ValueError(f"TOFU data folder: {value} is not a folder")
        return found


UnlearnData = Annotated[Union[UnlearnFactWorld, UnlearnFiles], Field(discriminator="source")]


class ForgetRequest(Strict):
    """One forget request: an id the ledger knows it by, and its items (exactly one of split, percent, path)."""

    id: str = Field(pattern=REQUEST_ID_PATTERN, description="the ledger's key for this request")
    split: str | None = Field(None, description="fact world: forget01 / forget05 / forget10; tofu: a file name")
    percent: int | None = Field(None, ge=1, le=90, description="fact world: the next N% of the trainable people "
                                                               "no earlier request named (forget01, then the next 1%...)")
    path: str | None = Field(None, description="a TOFU-format file of items to forget (each must be trained on)")

    @field_validator("path")
    @classmethod
    def _exists(cls, value):
        return None if value is None else _existing_path(value, "request file")

    @model_validator(mode="after")
    def _one_source(self):
        given = [name for name in ("split", "percent", "path") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of split, percent or path (got {', '.join(given) or 'none'})")
        return self


class TargetSpec(Strict):
    """How the target (forget ∪ retain) and the retain models are trained: the same recipe for both."""

    training: TrainingSpec = Field(default_factory=TrainingSpec)
    privacy: PrivacySpec | None = Field(None, description="train a DP base with (ε, δ)-DP on all the data (dp2u "
                                                          "needs it); the deployed target is that base fine-tuned "
                                                          "without noise; the retain models are never private")
    deploy_fraction: float = Field(0.5, gt=0, le=1, description="with privacy: the deployed target fine-tunes the DP "
                                                                "base on all the data, without noise, for this share "
                                                                "of target.training.steps (DP2Unlearning: 5 epochs "
                                                                "after 10)")

    pretraining: TrainingSpec = Field(
        default_factory=lambda: TrainingSpec(steps=1000, batch_size=32, lr=3e-3, warmup_steps=20, log_every=200),
        description="fact world: the base's pre-training stage on the public facts (data.real_authors, "
                    "data.world_facts) before the target and the retain models are fine-tuned from it; cached like "
                    "the target, its cost reported apart (TOFU: the base LLM already knows them)")

    _no_global_clipping = model_validator(mode="after")(lambda self: _private_clipping(self))


RECIPE_METHODS = ("retrain", "dp2u")  # they serve a request with the target's recipe, not `training`


class UnlearnMethodSpec(MethodSpec):
    """An unlearning method by registered name, with its parameters; `gu` adds GU's projection."""

    family: ClassVar[str] = "unlearning"

    gu: bool = Field(False, description="project the forget gradient orthogonal to retain gradients (GU)")
    gu_samples: int = Field(8, ge=1, le=256, description="retain items whose gradients GU projects out, per step")
    lr: float | None = Field(None, gt=0, description="this entry's learning rate (default: training.lr); list a "
                                                     "method once per value to sweep it (label: npo@lr0.001)")
    steps: int | None = Field(None, gt=0, description="this entry's steps per request (default: training.steps); "
                                                      "label: npo@steps40")

    @property
    def base_label(self) -> str:
        """The method with or without GU, whatever its lr / steps: what a sweep's curve is named after."""
        return f"{self.name}+gu" if self.gu else self.name

    @property
    def label(self) -> str:
        return self.base_label + (f"@lr{self.lr:g}" if self.lr is not None else "") + (
            f"@steps{self.steps}" if self.steps is not None else "")

    @property
    def variant(self) -> dict | None:
        """The schedule this entry overrides ({"lr": ..., "steps": ...}), or None."""
        found = {k: getattr(self, k) for k in ("lr", "steps") if getattr(self, k) is not None}
        return found or None


class UnlearnEvalSpec(EvalSpec):
    """Unlearning evaluation: TOFU's metrics on the forget / retain / holdout sets of each point."""

    max_new_tokens: int = Field(200, ge=1, le=4096, description="greedy generation for ROUGE-L stops at eos or "
                                                                "after this many tokens (open-unlearning: 200)")


class UnlearnJob(_Job):
    """`kind: unlearn` — train a target, serve a sequence of forget requests with each method, compare to retraining."""

    kind: Literal["unlearn"]
    name: str = Field("unlearn", pattern=NAME_PATTERN, description="run name (folder prefix)")
    data: UnlearnData
    target: TargetSpec = Field(default_factory=TargetSpec)
    requests: list[ForgetRequest] = Field(default_factory=lambda: [ForgetRequest(id="forget10", split="forget10")],
                                          min_length=1, description="forget requests, served in order")
    methods: list[UnlearnMethodSpec] = Field(min_length=1, description="each serves every request, from the target")
    eval: UnlearnEvalSpec = Field(default_factory=UnlearnEvalSpec)
    ledger: str | None = Field(None, description="the request ledger (JSON Lines); default: ledger.jsonl in the run "
                                                 "folder. Name a path to keep it across runs")
    cache: str | None = Field(None, description="where trained target and retain models are kept for reuse, by "
                                                "content hash; default: .palimpsest-cache in the current folder")
    ledger_mode: Literal["refuse", "serve_again"] = Field(
        "refuse", description="a request the ledger has under another configuration (method parameters, recipes, "
                              "data, ε, model, evaluation): refuse it, naming what differs, or serve_again, recording "
                              "a new entry beside the old one")
    seeds: int = Field(1, ge=1, le=50, description="repeat the target, the retain models and every method at seeds "
                                                   "seed, seed+1, ... (the fact world stays the job seed's); the "
                                                   "summary gives each metric's mean and 95% bootstrap interval")

    _names_or_mappings = field_validator("methods", mode="before")(lambda value: _method_entries(value))

    @field_validator("ledger", "cache")
    @classmethod
    def _absolute(cls, value):
        return None if value is None else str(Path(value).expanduser().resolve())

    @field_validator("requests")
    @classmethod
    def _distinct_ids(cls, value):
        ids = [r.id for r in value]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"each request id once ({', '.join(repeated)} repeated)")
        return value

    @model_validator(mode="after")
    def _distinct_methods(self):
        labels = [m.label for m in self.methods]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise ValueError(f"methods: each method (with or without gu, at each lr / steps) once "
                             f"({', '.join(repeated)} repeated)")
        return self

    @model_validator(mode="after")
    def _own_schedule(self):
        for index, method in enumerate(self.methods):
            if method.variant and method.name in RECIPE_METHODS:
                field = "lr" if method.lr is not None else "steps"
                raise ValueError(f"methods[{index}].{field}: {method.name} trains with target.training (its "
                                 f"{'share of ' if method.name == 'dp2u' else ''}steps and lr); lr and steps set how "
                                 "the other methods unlearn")
        return self

    @model_validator(mode="after")
    def _one_ledger_per_model(self):
        if self.seeds > 1 and self.ledger is not None:
            raise ValueError("seeds: a ledger kept across runs (ledger) records the requests of one deployed model; "
                             "with seeds > 1 each seed keeps its own ledger in its folder: drop ledger or set seeds: 1")
        return self


JOB_KINDS: dict[str, type[Strict]] = {"train": TrainJob, "continual": ContinualJob,
                                      "privacy_sweep": PrivacySweepJob, "unlearn": UnlearnJob, "rl": RLJob,
                                      "bench": BenchJob}
JobSpec = Union[TrainJob, ContinualJob, PrivacySweepJob, UnlearnJob, RLJob, BenchJob]
