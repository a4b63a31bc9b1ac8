"""The `tune:` section of a job spec: a search space over the job's own fields, objectives, scheduler.

A space names fields by their dotted path in the job (`training.lr`,
`methods.0.params.ewc_lambda`, `ppo.lr`); each trial is the job with the sampled values
put in, validated like a user's spec. Up front, every value a dimension can take at its
ends (both bounds, every choice) is put into the job and validated, so a space that can
produce an invalid spec (a negative learning rate, an unknown method) is refused before
anything runs.

Objectives are keys of the run's summary.json (`acc`, `forget_quality`, `mia.min_k`, …;
`METRICS` lists them per kind). Some are also reported while a trial runs, per task,
request or evaluation (`PROGRESS`): only those let ASHA and PBT act.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from palimpsest.spec.common import Strict, _suggest

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")
TRAIN_SETS = ("train", "holdout", "eval", "holdout_rules")
EVAL_METRICS = ("answer_accuracy", "token_accuracy", "loss")
MIA_ATTACKS = ("loss", "zlib", "min_k")

UNLEARN_REQUEST = ("forget_quality", "model_utility", "forget_rouge", "forget_truth_ratio", "privleak",
                   "extraction_strength", "exact_memorization", "mia.loss", "mia.zlib", "mia.min_k",
                   "mia.min_k_plus_plus")
# kind -> objectives a finished trial reports (keys of its summary.json, nested keys dotted)
METRICS: dict[str, tuple[str, ...]] = {
    "continual": ("acc", "bwt", "fwt", "forgetting", "min_acc", "wc_acc", "general_loss", "rule_accuracy",
                  "cost.wall_s"),
    "unlearn": UNLEARN_REQUEST + ("cost.ratio", "cost.unlearn_wall_s"),
    "train": tuple(f"final.{s}.{m}" for s in TRAIN_SETS for m in EVAL_METRICS)
    + tuple(f"mia.attacks.{a}.auc" for a in MIA_ATTACKS) + ("rule_accuracy", "cost.wall_s"),
    "rl": ("best_success_rate", "test_success_rate", "best_mean_return"),
}
# kind -> objectives also reported while a trial runs (what ASHA and PBT act on), and per what
PROGRESS: dict[str, tuple[str, ...]] = {
    "continual": ("acc", "general_loss"),  # after each task: ACC over the tasks seen so far
    "unlearn": UNLEARN_REQUEST,  # after each request
    "train": tuple(f"final.{s}.{m}" for s in TRAIN_SETS for m in EVAL_METRICS),  # every eval.eval_every steps
    "rl": ("best_success_rate",),  # every greedy evaluation
}
UNIT = {"continual": "task", "unlearn": "request", "train": "evaluation", "rl": "evaluation"}


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


def corner_values(dimension: dict) -> list:
    """The values a dimension reaches at its ends: its bounds, or every choice."""
    (values,) = dimension.values()
    return list(values)


def set_path(document: dict, path: str, value) -> None:
    """Put `value` at a dotted path (a numeric part indexes a list).

    Raises:
        KeyError: the path goes through something that is not a mapping or a list, or past a list's end.
    """
    parts = path.split(".")
    node = document
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KeyError(f"{'.'.join(parts[:i]) or 'the job'} is a list of {len(node)}: give an index below "
                               f"{len(node)}, not '{part}'")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise KeyError(f"{'.'.join(parts[:i])} is a value, not a section")
        if last:
            node[part] = value
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


def with_values(document: dict, values: dict) -> dict:
    """A copy of `document` with each dotted path set to its value."""
    found = copy.deepcopy(document)
    for path, value in values.items():
        set_path(found, path, value)
    return found


RESOURCE_PPO = ("ppo.num_env_runners", "ppo.num_cpus_per_env_runner", "ppo.num_gpus_per_learner")


def metric_problems(spec) -> list[str]:
    """Rules that tie the tune section to the job: known objectives, what a scheduler needs, one method."""
    tune, kind = spec.tune, spec.kind
    problems = []
    if kind == "privacy_sweep" or getattr(getattr(spec, "job", None), "tune", None) is not None:
        return [f"tune: kind {kind} cannot be searched (a privacy_sweep is a sweep already; search a train job's "
                "privacy fields instead)"]
    sized = [path for path in tune.space if path.split(".")[0] == "scaling" or path in RESOURCE_PPO]
    if sized:  # Tune reserves one size for every trial, checked against the cluster before the search starts
        problems.append(f"tune.space: {', '.join(sized)}: a trial's resources are one size for the whole search "
                        "(set them in the job, or run one search per size)")
    for metric in tune.metrics:
        if metric not in METRICS[kind]:
            problems.append(f"tune.metric: unknown objective '{metric}' for kind {kind}"
                            + _suggest(metric, METRICS[kind]))
    if kind == "train":
        have = train_sets(spec)
        for metric in tune.metrics:
            if metric.startswith("final.") and metric.split(".")[1] not in have:
                problems.append(f"tune.metric: {metric}: this job evaluates {', '.join(have)} only")
    if tune.scheduler != "fifo" and not problems:
        (metric,) = tune.metrics
        if metric not in PROGRESS[kind]:
            problems.append(f"tune.metric: {tune.scheduler} acts on results reported per {UNIT[kind]}, and {metric} "
                            f"is known only at the end; per {UNIT[kind]}: {', '.join(PROGRESS[kind])}")
        if kind == "train" and spec.eval.eval_every is None:
            problems.append(f"eval.eval_every: {tune.scheduler} needs results while a trial trains; set it")
    problems += private_search_problems(spec)
    if tune.scheduler == "pbt" and kind != "rl":
        problems.append(f"tune.scheduler: pbt restores trials from checkpoints at every report; kind {kind} "
                        "checkpoints at task ends only: use asha or fifo")
    if kind in ("continual", "unlearn") and len(spec.methods) != 1:
        problems.append(f"methods: a search tunes one method ({len(spec.methods)} given); its objective is that "
                        "method's")
    if kind == "rl":
        for field, count in (("agents", len(spec.agents)), ("envs", len(spec.envs)), ("seeds", spec.seeds)):
            if count != 1:
                problems.append(f"{field}: a search trains one agent on one environment setting with one seed per "
                                f"trial ({count} given)")
    return problems


# Objectives that read the training data without noise, per kind (a fact-world stream's tasks are
# scored on the facts they trained on: retention is the question there).
NONPRIVATE_OBJECTIVES = {
    "train": lambda spec, metric: metric.startswith(("final.train.", "mia.")),
    "continual": lambda spec, metric: spec.stream.source == "factworld" and metric not in (
        "general_loss", "rule_accuracy", "cost.wall_s"),
}
# Fields a `poisson` search may not vary: every trial must be the same (λ, ε)-RDP algorithm.
PLAN_FIELDS = ("privacy.", "training.steps", "training.batch_size", "training.grad_accum", "data.", "stream.",
               "seed", "scaling.")


def private_search_problems(spec) -> list[str]:
    """A search over a private job: objectives that read the training data outside DP-SGD, and what a
    `poisson` selection (Papernot & Steinke, 2022) needs."""
    tune, kind = spec.tune, spec.kind
    if getattr(spec, "privacy", None) is None:
        if tune.private_selection != "compose":
            return [f"tune.private_selection: {tune.private_selection} accounts a private search; this job has no "
                    "privacy section"]
        return []
    problems = []
    reads = NONPRIVATE_OBJECTIVES.get(kind, lambda spec, metric: False)
    if not tune.allow_nonprivate_objective:
        for metric in tune.metrics:
            if reads(spec, metric):
                problems.append(f"tune.metric: {metric} reads the training data without noise, so choosing by it "
                                "leaks what ε does not count; pick an objective on data the model never trained "
                                "on (e.g. final.holdout.*), or set tune.allow_nonprivate_objective: true")
    if tune.private_selection == "poisson":
        if tune.search != "random" or tune.scheduler != "fifo" or len(tune.metrics) != 1:
            problems.append("tune.private_selection: poisson runs independent random trials to the end and "
                            "releases the best by one objective: use search random, scheduler fifo, one metric")
        if any("grid" in d for d in tune.space.values()):
            problems.append("tune.private_selection: poisson draws every trial from the same distribution: "
                            "no grid dimensions (use choice)")
        fixed = [p for p in tune.space if any(p == f.rstrip(".") or p.startswith(f) for f in PLAN_FIELDS)]
        if fixed:
            problems.append(f"tune.space: {', '.join(fixed)}: a poisson selection needs every trial to spend the "
                            "same budget; search these with private_selection: compose")
    return problems


def train_sets(spec) -> list[str]:
    """The sets a train job evaluates (the names of summary.json's `final`)."""
    data = spec.data
    if data.source == "factworld":
        if not spec.eval.holdout or data.split == "holdout":
            return ["train"]
        return ["train", "holdout"] + (["holdout_rules"] if data.rules else [])
    has_eval = data.eval_path if data.source == "file" else data.eval_split
    return ["train", "eval"] if has_eval else ["train"]


def units(spec) -> int:
    """How many units (tasks, requests, evaluations) a job's trial reports, its last in its summary.

    The base job's count is ASHA's max_t; a trial whose own count differs (a search over
    training.steps, eval.eval_every, budget.env_steps) is timed as a share of its own (`palimpsest.tune`).
    """
    kind = spec.kind
    if kind == "continual":
        stream = spec.stream
        return stream.num_tasks if stream.source == "factworld" else len(stream.tasks)
    if kind == "unlearn":
        return len(spec.requests)
    if kind == "train":
        every = spec.eval.eval_every
        return (spec.training.steps - 1) // every + 1 if every else 1
    iterations = math.ceil(spec.budget.env_steps / spec.ppo.train_batch_size)
    return math.ceil(iterations / spec.evaluation.every)


FINISHED = "finished"  # a trial's final report (its summary's figures): every unit done


def units_done(spec, report: dict) -> int:
    """How many of its units a trial had done at one of its reports to Tune (0: none).

    Read from the report itself, not from Tune's `training_iteration` (which restarts when a
    resumed trial reports again): the task or request it ended, the step it evaluated at, an rl
    trial's PPO iteration (kept in its checkpoint); a final report counts them all.
    """
    if spec.kind == "rl":  # an evaluation every `every` iterations, and one at the (possibly early) end
        return math.ceil(report.get("iteration", 0) / spec.evaluation.every)
    if report.get(FINISHED):
        return units(spec)
    if spec.kind == "train":
        return report["step"] // spec.eval.eval_every if "step" in report and spec.eval.eval_every else 0
    key = {"continual": "task", "unlearn": "request"}[spec.kind]
    return report[key] + 1 if key in report else 0
