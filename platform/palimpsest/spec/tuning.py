"""The `tune:` section of a job spec: a search space over the job's own fields, objectives, scheduler.

A space names fields by their dotted path in the job (`training.lr`,
`methods.0.params.ewc_lambda`, `ppo.lr`); each trial is the job with the sampled values
put in, validated like a user's spec. Up front, every value a dimension can take at its
ends (both bounds, every choice) is put into the job and validated, so a space that can
produce an invalid spec (a negative learning rate, an unknown method) is refused before
anything runs.

Objectives are keys of the run's summary.json (`acc`, `forget_quality`, `mia.min_k`, …;
`palimpsest.kinds` lists them per kind). Some are also reported while a trial runs, per task,
request or evaluation (`PROGRESS`): only those let ASHA and PBT act.
"""

from __future__ import annotations

import copy

from palimpsest.kinds import KINDS, UNLEARN_REQUEST  # noqa: F401  (UNLEARN_REQUEST: the search's progress keys)
from palimpsest.spec.search import FINISHED  # noqa: F401  (the search reads it here)
from palimpsest.spec.common import _suggest

# kind -> objectives a finished trial reports, those also reported while it runs, and per what
# (declared in palimpsest/kinds.py)
METRICS = {name: info.objectives for name, info in KINDS.items() if info.objectives}
PROGRESS = {name: info.progress for name, info in KINDS.items() if info.objectives}
UNIT = {name: info.unit for name, info in KINDS.items() if info.objectives}


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
    if KINDS[kind].searchable_note or getattr(getattr(spec, "job", None), "tune", None) is not None:
        return [f"tune: kind {kind} cannot be searched ({KINDS[kind].searchable_note})"]
    sized = [path for path in tune.space if path.split(".")[0] == "scaling" or path in RESOURCE_PPO]
    if sized:  # Tune reserves one size for every trial, checked against the cluster before the search starts
        problems.append(f"tune.space: {', '.join(sized)}: a trial's resources are one size for the whole search "
                        "(set them in the job, or run one search per size)")
    for metric in tune.metrics:
        if metric not in METRICS[kind]:
            problems.append(f"tune.metric: unknown objective '{metric}' for kind {kind}"
                            + _suggest(metric, METRICS[kind]))
    problems += spec.search_problems()  # the kind's own rules (spec/<kind>.py)
    if tune.scheduler != "fifo" and not problems:
        (metric,) = tune.metrics
        if metric not in PROGRESS[kind]:
            problems.append(f"tune.metric: {tune.scheduler} acts on results reported per {UNIT[kind]}, and {metric} "
                            f"is known only at the end; per {UNIT[kind]}: {', '.join(PROGRESS[kind])}")
    problems += private_search_problems(spec)
    if tune.scheduler == "pbt" and not KINDS[kind].pbt:
        problems.append(f"tune.scheduler: pbt restores trials from checkpoints at every report; kind {kind} "
                        "checkpoints at task ends only: use asha or fifo")
    return problems


# Fields a `poisson` search may not vary: every trial must be the same (λ, ε)-RDP algorithm.
PLAN_FIELDS = ("privacy.", "training.steps", "training.batch_size", "training.grad_accum", "data.", "stream.",
               "seed", "scaling.")


def private_search_problems(spec) -> list[str]:
    """A search over a private job: objectives that read the training data outside DP-SGD, and what a
    `poisson` selection (Papernot & Steinke, 2022) needs."""
    tune = spec.tune
    if getattr(spec, "privacy", None) is None:
        if tune.private_selection != "compose":
            return [f"tune.private_selection: {tune.private_selection} accounts a private search; this job has no "
                    "privacy section"]
        return []
    problems = []
    if not tune.allow_nonprivate_objective:
        for metric in tune.metrics:
            if spec.reads_training_data(metric):
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


def units(spec) -> int:
    """How many units (tasks, requests, evaluations) a job's trial reports, its last in its summary.

    The base job's count is ASHA's max_t; a trial whose own count differs (a search over
    training.steps, eval.eval_every, budget.env_steps) is timed as a share of its own (`palimpsest.tune`).
    Each searchable kind's spec model counts its own (`trial_units`).
    """
    return spec.trial_units()




def units_done(spec, report: dict) -> int:
    """How many of its units a trial had done at one of its reports to Tune (0: none).

    Read from the report itself, not from Tune's `training_iteration` (which restarts when a
    resumed trial reports again): the task or request it ended, the step it evaluated at, an rl
    trial's PPO iteration (kept in its checkpoint); a final report counts them all.
    """
    return spec.units_done(report)
