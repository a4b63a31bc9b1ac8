"""`kind: unlearn` — forget requests served by unlearning methods, measured as TOFU and MUSE measure them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from palimpsest.spec.base import NAME_PATTERN, JobBase, MethodSpec, method_entries, private_clipping
from palimpsest.spec.common import EvalSpec, PrivacySpec, Strict, TrainingSpec, _existing_path


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

    _no_global_clipping = model_validator(mode="after")(lambda self: private_clipping(self))


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


class UnlearnJob(JobBase):
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

    _names_or_mappings = field_validator("methods", mode="before")(lambda value: method_entries(value))

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

    # What a trial of a search reports, per request (spec/tuning.py: units, units_done).
    def trial_units(self) -> int:
        return len(self.requests)

    def units_reported(self, report: dict) -> int:
        return report["request"] + 1 if "request" in report else 0

    def search_problems(self) -> list[str]:
        return self._one_method()

    def search_document(self) -> dict:
        # the model cache pinned to an absolute path: a search's trials share the target and retain
        # models, whatever folder Ray runs them in
        document = super().search_document()
        if document.get("cache") is None:
            document["cache"] = str(Path.cwd().resolve() / ".palimpsest-cache")
        return document
