"""`kind: continual` — fine-tune on a stream of tasks with each listed method; measure forgetting.

One `fit()` runs every method (the workers loop over methods, then tasks), all on the
same stream, tokenizer, model init and seed. After each task every task's eval set is
evaluated, which gives the accuracy matrix; between task ends, the seen tasks are
evaluated every `eval.eval_every` steps (continual evaluation), which gives min-ACC and
WC-ACC.

What R is measured on, per task (recorded in summary.json as `eval_sets`):
- fact world: the task's own facts — a memorisation stream, so R is retention of trained
  facts by design;
- `file` / `hf` tasks: their `eval_path` / `eval_split` (GEM's R is test accuracy), or the
  training examples when the stream says `eval_on_train: true`.
General sentences are split in two disjoint pools: one methods may train on (GeRe's
replay), one the general loss is measured on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from palimpsest.data import DataError, FactWorld, QAExample, generate_world
from palimpsest.data.factworld import is_rule, percent_ceil
from palimpsest.metrics.continual import (
    average_accuracy, backward_transfer, forgetting, forward_transfer, min_accuracy, worst_case_accuracy,
)
from palimpsest.runners.common import (
    build_tokenizer, load_dataset_spec, loop_config, subsample, text_items, training_cost,
)
from palimpsest.runners.common import method_runs as checked_method_runs
from palimpsest.privacy import released_privacy
from palimpsest.runners.train import RULES_SET, fit_and_export
from palimpsest.run_folder import RunFolder
from palimpsest.spec import ContinualJob
from palimpsest.train.batching import tokenize_qa
from palimpsest.train.config import LoopConfig, MethodRun
from palimpsest.train.sampling import rng_for

METRIC = "answer_accuracy"
TABLE_KEYS = ("acc", "bwt", "fwt", "forgetting", "min_acc", "wc_acc", "general_loss")
GENERAL_EVAL = "general"


@dataclass
class Stream:
    """A continual stream as examples: per task its training set and the set R is measured on."""

    train: list[list[QAExample]]
    evaluation: list[list[QAExample]]
    measured_on: list[str]  # per task, in words
    general_replay: list[str]  # general sentences methods may train on
    general_eval: list[str]  # general sentences the general loss is measured on (never trained on)
    rules_eval: list[QAExample] = field(default_factory=list)  # rule facts of people never trained on


@dataclass
class PreparedContinual:
    tokenizer: object
    worker_config: LoopConfig
    task_names: list[str]
    measured_on: dict[str, str]


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def _split_general(sentences: list[str], seed: int) -> tuple[list[str], list[str]]:
    """A seeded half/half split of one general file: (replay pool, evaluation pool), disjoint."""
    unique = list(dict.fromkeys(sentences))
    order = rng_for(seed, "general-split").permutation(len(unique))
    half = len(unique) // 2
    return [unique[i] for i in order[half:]], [unique[i] for i in order[:half]]


def load_stream(spec: ContinualJob) -> Stream:
    """The tasks' training and evaluation examples and the two general pools."""
    stream = spec.stream
    if stream.source == "factworld":
        held = percent_ceil(stream.num_entities, 10) if stream.rules else 0
        world = generate_world(seed=stream.seed if stream.seed is not None else spec.seed,
                               num_entities=stream.num_entities + held,
                               attributes_per_entity=stream.attributes_per_entity, rules=stream.rules)
        # With rules, the last `held` people are never trained on: their rule facts give rule_accuracy.
        trained = world.entities[: stream.num_entities]
        outside = [f for f in world.facts_of(world.entities[stream.num_entities:]) if is_rule(f)]
        world = FactWorld(seed=world.seed, entities=trained, facts=world.facts_of(trained),
                          attributes=world.attributes, num_perturbed=world.num_perturbed)
        tasks = world.task_stream(stream.num_tasks, by=stream.by)
        # general_corpus(n) gives n distinct sentences: the first ones are scored, the rest replayable.
        general = world.general_corpus(stream.general_samples + stream.general_replay_samples)
        return Stream(train=tasks, evaluation=[[f for f in task if not is_rule(f)] for task in tasks],
                      measured_on=["its own trained facts (fact world: retention of memorised facts)"] * len(tasks),
                      general_replay=general[stream.general_samples:], general_eval=general[: stream.general_samples],
                      rules_eval=outside)
    train, evaluation, measured_on = [], [], []
    for task in stream.tasks:
        examples = load_dataset_spec(task)
        train.append(examples)
        if task.source == "file" and task.eval_path:
            evaluation.append(load_dataset_spec(task.model_copy(update={"path": task.eval_path})))
            measured_on.append(f"eval_path {task.eval_path}")
        elif task.source == "hf" and task.eval_split:
            evaluation.append(load_dataset_spec(task.model_copy(update={"split": task.eval_split})))
            measured_on.append(f"eval_split {task.eval_split} of {task.name}")
        else:
            evaluation.append(examples)
            measured_on.append("its training examples (stream.eval_on_train)")
    replay, scored = [], []
    if stream.general_path and stream.general_eval_path:
        replay, scored = _read_lines(stream.general_path), _read_lines(stream.general_eval_path)
        overlap = set(replay) & set(scored)
        replay = [s for s in replay if s not in overlap]  # never train on a sentence the general loss scores
    elif stream.general_path:
        replay, scored = _split_general(_read_lines(stream.general_path), spec.seed)
    elif stream.general_eval_path:
        scored = _read_lines(stream.general_eval_path)
    return Stream(train=train, evaluation=evaluation, measured_on=measured_on, general_replay=replay,
                  general_eval=scored)


def method_runs(spec: ContinualJob) -> list[MethodRun]:
    """The methods with their parameters checked and defaults filled in (DataError: `validate` reports the same)."""
    return checked_method_runs("continual", spec.methods)


def prepare(spec: ContinualJob, *, saved_tokenizer=None) -> PreparedContinual:
    """Load the stream, build tokenizer and loop config; check method parameters.

    Raises:
        DataError: unreadable data, an empty task, or bad method parameters.
    """
    methods = method_runs(spec)
    stream = load_stream(spec)
    for i, (train, evaluation) in enumerate(zip(stream.train, stream.evaluation)):
        if not train:
            raise DataError(f"stream.tasks[{i}]: no training examples")
        if not evaluation:
            raise DataError(f"stream.tasks[{i}]: the eval set has no examples")
    # Training data only (tasks and the replayable general pool): never the eval sets.
    tokenizer = build_tokenizer(spec.model, [e for task in stream.train for e in task],
                                extra_texts=stream.general_replay, saved=saved_tokenizer)
    names = [f"task{i}" for i in range(len(stream.train))]
    eval_sets = {name: tokenize_qa(tokenizer, subsample(task, spec.eval.max_examples))
                 for name, task in zip(names, stream.evaluation)}
    if stream.general_eval:
        eval_sets[GENERAL_EVAL] = text_items(tokenizer, stream.general_eval)
    if stream.rules_eval:
        eval_sets[RULES_SET] = tokenize_qa(tokenizer, subsample(stream.rules_eval, spec.eval.max_examples))
    config = loop_config(spec, tokenizer, tasks=stream.train, eval_sets=eval_sets, task_eval_names=names,
                         general=text_items(tokenizer, stream.general_replay), methods=methods, periodic="seen",
                         baseline=spec.eval.fwt_baseline)
    return PreparedContinual(tokenizer, config, names, dict(zip(names, stream.measured_on)))


MIN_ACC_OFF = ("not measured: eval.eval_every is null, so tasks are evaluated only at task ends, where the "
               "stability gap (a dip right after a task switch) cannot be seen")


def summarise_method(result: dict, baseline: dict, task_names: list[str], *, periodic: bool) -> dict:
    """Accuracy matrix and the CL metrics of one method's run."""
    T = len(task_names)
    matrix = [[row[name][METRIC] for name in task_names] for row in result["task_end"]]
    token_matrix = [[row[name]["token_accuracy"] for name in task_names] for row in result["task_end"]]
    b = [baseline[name][METRIC] for name in task_names]
    block = {
        "accuracy_matrix": matrix,
        "token_accuracy_matrix": token_matrix,
        "baseline_accuracy": b,
        "acc": average_accuracy(matrix),
        "bwt": backward_transfer(matrix),
        "fwt": forward_transfer(matrix, b),
        "forgetting": forgetting(matrix),
        "min_acc": None,
        "min_acc_per_task": {},
        "wc_acc": None,
        "general_loss": result["task_end"][-1][GENERAL_EVAL]["loss"] if GENERAL_EVAL in result["task_end"][-1] else None,
        "task_end_steps": result["task_end_steps"],
        "parameters": result["parameters"],
        "precision": result.get("precision"),
        "privacy": result.get("privacy"),
    }
    if RULES_SET in result["task_end"][-1]:  # rule facts of people never trained on, after the last task
        block["rule_accuracy"] = result["task_end"][-1][RULES_SET][METRIC]
    if periodic:
        curves = {k: [(r["step"], r["value"]) for r in result["records"] if r["split"] == name and r["metric"] == METRIC]
                  for k, name in enumerate(task_names)}
        mins = min_accuracy(curves, result["task_end_steps"])
        block["min_acc"] = (sum(mins.values()) / len(mins)) if mins else None
        block["min_acc_per_task"] = {task_names[k]: v for k, v in mins.items()}
        block["wc_acc"] = worst_case_accuracy(matrix[-1][T - 1], list(mins.values()), T)
    else:
        block["min_acc_note"] = MIN_ACC_OFF
    return block


def run(spec: ContinualJob, prepared: PreparedContinual, folder: RunFolder, *, use_ray: bool = True,
        progress=None) -> dict:
    """Run every method on the stream in one fit; write checkpoints/<method>/task-<t>, metrics and the summary."""
    def task_ends(checkpoints):
        return [(directory, folder.checkpoints / metrics["method"] / f"task-{metrics['task_end']}")
                for directory, metrics in checkpoints if "task_end" in metrics]

    output, started = fit_and_export(spec, prepared, folder, task_ends, use_ray=use_ray, progress=progress)
    methods, records = {}, []
    periodic = spec.eval.eval_every is not None
    for result in output["methods"]:
        records += [{**r, "method": result["name"]} for r in result["records"]]
        block = summarise_method(result, output["baseline"], prepared.task_names, periodic=periodic)
        block["cost"] = training_cost(result, spec.training.steps * len(prepared.task_names))
        methods[result["name"]] = block
    folder.write_metrics(records)
    summary = {
        "status": "ok",
        "kind": "continual",
        "name": spec.name,
        "seed": spec.seed,
        "tasks": prepared.task_names,
        "eval_sets": prepared.measured_on,
        "fwt_baseline": spec.eval.fwt_baseline,
        "steps": spec.training.steps * len(prepared.task_names),
        "methods": methods,
        "cost": {"wall_s": round(time.perf_counter() - started, 3),
                 "train_tokens": sum(b["cost"]["train_tokens"] for b in methods.values()),
                 "train_flops": sum(b["cost"]["train_flops"] for b in methods.values())},
    }
    summary["table"] = [{"method": name, **{k: block[k] for k in TABLE_KEYS}, "wall_s": block["cost"]["wall_s"]}
                        for name, block in methods.items()]
    if len(methods) == 1:  # docs/design.md: the keys at the top level when there is one method
        (only,) = methods.values()
        summary.update({k: v for k, v in only.items() if k != "cost"})
        summary["cost"] = only["cost"]
    # Every method's models are released from the same data: their budgets compose.
    summary["privacy"] = released_privacy([block["privacy"] for block in methods.values()])
    return summary


def search_progress(report: dict, last_task: int) -> dict | None:
    """A search's progress objectives in one report of the loop: ACC over the tasks seen, after each task
    but the last (its summary reports that one)."""
    if "task_end" not in report or report["task_end"] >= last_task:
        return None
    scores = report.get("scores") or {}
    seen = [scores.get(f"task{j}", {}).get("answer_accuracy") for j in range(report["task_end"] + 1)]
    found = {"acc": sum(seen) / len(seen)} if None not in seen else {}
    if "general" in scores:
        found["general_loss"] = scores["general"]["loss"]
    return {**found, "task": report["task_end"]}
