"""`kind: continual` — fine-tune on a stream of tasks with each listed method; measure forgetting.

One `fit()` per method (the worker loops over the tasks), all methods on the same
stream, tokenizer, model init and seed. After each task every task is evaluated,
which gives the accuracy matrix; between task ends, seen tasks are evaluated every
`eval.eval_every` steps (continual evaluation), which gives min-ACC and WC-ACC.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

from palimpsest.data import DataError, QAExample, generate_world
from palimpsest.metrics.continual import (
    average_accuracy, backward_transfer, forgetting, forward_transfer, min_accuracy, worst_case_accuracy,
)
from palimpsest.runners.common import (
    as_items, base_worker_config, build_tokenizer, export_checkpoint, fit, load_dataset_spec, subsample, text_items,
)
from palimpsest.runtime import RunFolder
from palimpsest.spec import ContinualJob

METRIC = "answer_accuracy"
TABLE_KEYS = ("acc", "bwt", "fwt", "forgetting", "min_acc", "wc_acc", "general_loss")


@dataclass
class PreparedContinual:
    tokenizer: object
    worker_config: dict
    task_names: list[str]


def load_stream(spec: ContinualJob) -> tuple[list[list[QAExample]], list[str]]:
    """The tasks' examples and the general sentences."""
    stream = spec.stream
    if stream.source == "factworld":
        world = generate_world(seed=stream.seed if stream.seed is not None else spec.seed,
                               num_entities=stream.num_entities, attributes_per_entity=stream.attributes_per_entity)
        return world.task_stream(stream.num_tasks, by=stream.by), world.general_corpus(stream.general_samples)
    tasks = [load_dataset_spec(task) for task in stream.tasks]
    general = []
    if stream.general_path:
        with open(stream.general_path) as handle:
            general = [line.strip() for line in handle if line.strip()]
    return tasks, general


def check_method_params(spec: ContinualJob) -> None:
    """Match each method's params against its constructor, before any run folder exists."""
    from palimpsest.continual import make_method, method_class

    problems = []
    for i, method in enumerate(spec.methods):
        allowed = [p for p in inspect.signature(method_class(method.name).__init__).parameters
                   if p not in ("self", "params")]
        unknown = sorted(set(method.params) - set(allowed))
        if unknown:
            problems.append(f"methods[{i}].params: unknown parameter(s) {', '.join(unknown)} for {method.name}; "
                            f"allowed: {', '.join(allowed) or 'none'}")
            continue
        try:
            make_method(method.name, **method.params)
        except (TypeError, ValueError) as error:
            problems.append(f"methods[{i}].params: {error}")
    if problems:
        raise DataError("; ".join(problems))


def prepare(spec: ContinualJob, *, saved_tokenizer=None) -> PreparedContinual:
    """Load the stream, build tokenizer and worker config; check method parameters.

    Raises:
        DataError: unreadable data, an empty task, or bad method parameters.
    """
    check_method_params(spec)
    tasks, general = load_stream(spec)
    for i, task in enumerate(tasks):
        if not task:
            raise DataError(f"stream: task {i} has no examples")
    tokenizer = build_tokenizer(spec.model, [e for task in tasks for e in task], extra_texts=general, saved=saved_tokenizer)
    names = [f"task{i}" for i in range(len(tasks))]
    eval_sets = {name: as_items(tokenizer, subsample(task, spec.eval.max_examples)) for name, task in zip(names, tasks)}
    general_items = text_items(tokenizer, general)
    if general_items:
        eval_sets["general"] = general_items
    config = {
        **base_worker_config(spec, tokenizer),
        "tasks": [as_items(tokenizer, task) for task in tasks],
        "task_eval_names": names,
        "eval_sets": eval_sets,
        "general_items": general_items,
        "periodic_eval": "seen",
        "baseline_eval": True,
    }
    return PreparedContinual(tokenizer, config, names)


def summarise_method(output: dict, task_names: list[str]) -> dict:
    """Accuracy matrix and the CL metrics of one method's run."""
    T = len(task_names)
    matrix = [[row[name][METRIC] for name in task_names] for row in output["task_end"]]
    token_matrix = [[row[name]["token_accuracy"] for name in task_names] for row in output["task_end"]]
    baseline = [output["baseline"][name][METRIC] for name in task_names]
    curves = {k: [(r["step"], r["value"]) for r in output["records"] if r["split"] == name and r["metric"] == METRIC]
              for k, name in enumerate(task_names)}
    mins = min_accuracy(curves, output["task_end_steps"])
    block = {
        "accuracy_matrix": matrix,
        "token_accuracy_matrix": token_matrix,
        "baseline_accuracy": baseline,
        "acc": average_accuracy(matrix),
        "bwt": backward_transfer(matrix),
        "fwt": forward_transfer(matrix, baseline),
        "forgetting": forgetting(matrix),
        "min_acc": (sum(mins.values()) / len(mins)) if mins else None,
        "min_acc_per_task": {task_names[k]: v for k, v in mins.items()},
        "wc_acc": worst_case_accuracy(matrix[-1][T - 1], list(mins.values()), T),
        "general_loss": output["final"]["general"]["loss"] if "general" in output["final"] else None,
        "task_end_steps": output["task_end_steps"],
        "parameters": output["parameters"],
    }
    return block


def run(spec: ContinualJob, prepared: PreparedContinual, folder: RunFolder, *, use_ray: bool = True) -> dict:
    """Run every method on the stream; write checkpoints/<method>/task-<t>, metrics and the summary."""
    prepared.tokenizer.save_pretrained(str(folder.tokenizer))
    started = time.perf_counter()
    methods, records = {}, []
    total_tokens = total_flops = 0
    for method in spec.methods:
        t0 = time.perf_counter()
        config = {**prepared.worker_config, "method": {"name": method.name, "params": method.params}}
        output, checkpoints = fit(spec, config, folder, f"{folder.path.name}-{method.name}", use_ray=use_ray)
        for directory, metrics in checkpoints:
            if "task_end" in metrics:
                export_checkpoint(directory, folder.checkpoints / method.name / f"task-{metrics['task_end']}",
                                  prepared.tokenizer)
        records += [{**r, "method": method.name} for r in output["records"]]
        block = summarise_method(output, prepared.task_names)
        params = output["parameters"]["total"]
        block["cost"] = {"wall_s": round(time.perf_counter() - t0, 3), "train_tokens": output["train_tokens"],
                         "train_flops": 6 * params * output["train_tokens"]}
        total_tokens += output["train_tokens"]
        total_flops += block["cost"]["train_flops"]
        methods[method.name] = block
    folder.write_metrics(records)
    summary = {
        "status": "ok",
        "kind": "continual",
        "name": spec.name,
        "seed": spec.seed,
        "tasks": prepared.task_names,
        "steps": spec.training.steps * len(prepared.task_names),
        "methods": methods,
        "cost": {"wall_s": round(time.perf_counter() - started, 3), "train_tokens": total_tokens,
                 "train_flops": total_flops},
    }
    summary["table"] = [{"method": name, **{k: block[k] for k in TABLE_KEYS}, "wall_s": block["cost"]["wall_s"]}
                        for name, block in methods.items()]
    if len(methods) == 1:  # the DESIGN.md keys at the top level when there is one method
        (only,) = methods.values()
        summary.update({k: v for k, v in only.items() if k != "cost"})
        summary["cost"] = only["cost"]
    return summary
