"""The `tune:` section's model: a search space over the job's own fields, objectives, scheduler.

Its rules against the job (known objectives, what a scheduler needs) are in `spec/tuning.py`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from palimpsest.spec.common import Strict

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")
FINISHED = "finished"  # a trial's final report (its summary's figures): every unit done


class TuneSpec(Strict):
    """A Ray Tune search over the job's own fields."""

    space: dict[str, dict[str, Any]] = Field(
        min_length=1, description="dotted field path -> one distribution: {uniform: [lo, hi]}, {loguniform: [lo, hi]}, "
                                  "{randint: [lo, hi]} (both ends included), {choice: [...]} or {grid: [...]} "
                                  "(every value, num_samples times)")
    metric: str | list[str] = Field(description="the objective (a summary.json key of the job's kind), or a list "
                                                "of objectives for a multi-objective search")
    mode: Literal["min", "max"] | list[Literal["min", "max"]] = Field(
        description="min or max, one per metric")
    num_samples: int = Field(8, ge=1, le=100_000, description="trials drawn (with grid: per grid point)")
    scheduler: Literal["fifo", "asha", "pbt"] = Field(
        "fifo", description="fifo: every trial runs to the end; asha: stop poor trials early; pbt: exploit and "
                            "explore at each report (kind rl)")
    search: Literal["random", "optuna"] = Field("random", description="random sampling, or Optuna's TPE (several "
                                                                      "metrics: its multi-objective sampler)")
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as the cluster's CPUs and GPUs hold")
    time_budget_s: float | None = Field(None, gt=0, description="stop starting and running trials after this long")
    grace_period: int = Field(1, ge=1, description="asha: reports (tasks, requests, evaluations) every trial gets")
    reduction_factor: float = Field(2, gt=1, description="asha: keep the best 1/reduction_factor at each rung")
    perturbation_interval: int = Field(1, ge=1, description="pbt: reports between exploit/explore steps")
    seed: int | None = Field(None, ge=0, description="the searcher's seed; default: the job's seed")
    private_selection: Literal["compose", "poisson"] = Field(
        "compose", description="a private job: how the selected model's ε counts the search. compose: every "
                               "trial's accountant history composed (any space, scheduler, searcher); poisson: "
                               "Papernot & Steinke (2022) — the number of trials is drawn from a Poisson "
                               "distribution of mean num_samples, and only the best trial's model and score are "
                               "released (random search, fifo, one objective, privacy plan fixed)")
    allow_nonprivate_objective: bool = Field(
        False, description="a private job: allow an objective that reads the training data without noise "
                           "(final.train.*, mia.*, a fact-world stream's accuracies); the selection then "
                           "leaks what the ε does not count")

    @field_validator("space")
    @classmethod
    def _distributions(cls, value):
        problems = []
        for path, dimension in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", path):
                problems.append(f"{path}: not a dotted field path (e.g. training.lr, methods.0.params.ewc_lambda)")
                continue
            if path.split(".")[0] in ("kind", "tune", "name"):
                problems.append(f"{path}: cannot be searched")
                continue
            problem = _dimension_problem(dimension)
            if problem:
                problems.append(f"{path}: {problem}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _objectives(self):
        metrics, modes = self.metrics, self.modes
        if len(modes) != len(metrics):
            raise ValueError(f"mode: one per metric ({len(metrics)} metrics, {len(modes)} modes)")
        if len(set(metrics)) != len(metrics):
            raise ValueError("metric: each objective once")
        if len(metrics) > 1 and self.scheduler != "fifo":
            raise ValueError(f"scheduler: {self.scheduler} acts on one metric; a multi-objective search uses fifo")
        grid = [p for p, d in self.space.items() if "grid" in d]
        if grid and self.search == "optuna":
            raise ValueError(f"search: optuna samples its own points and takes no grid ({', '.join(grid)}); use "
                             "choice, or search: random")
        if self.scheduler == "pbt" and (self.search == "optuna" or grid):
            raise ValueError("scheduler: pbt mutates the space itself: use search: random and no grid")
        return self

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[str]:
        return [self.mode] if isinstance(self.mode, str) else list(self.mode)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dimension_problem(dimension) -> str | None:
    if not isinstance(dimension, dict) or len(dimension) != 1 or next(iter(dimension)) not in DISTRIBUTIONS:
        return f"give exactly one distribution, one of {', '.join(DISTRIBUTIONS)} (e.g. {{loguniform: [1e-4, 1e-2]}})"
    (kind, bounds), = dimension.items()
    if kind in ("choice", "grid"):
        if not isinstance(bounds, list) or not bounds:
            return f"{kind}: a non-empty list of values"
        return None
    if not isinstance(bounds, list) or len(bounds) != 2 or not all(_number(b) for b in bounds):
        return f"{kind}: [low, high], two numbers"
    low, high = bounds
    if kind == "randint" and not all(isinstance(b, int) for b in bounds):
        return f"randint: [low, high], two integers (got {bounds})"
    if low > high or (low == high and kind != "randint"):
        return f"{kind}: low {low} must be below high {high}"
    if kind == "loguniform" and low <= 0:
        return f"loguniform: low {low} must be above 0"
    return None
