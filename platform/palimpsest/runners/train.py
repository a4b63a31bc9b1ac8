"""`kind: train` — fine-tune a model on one dataset under the shared loop and evaluate it.

prepare(spec)  -> data, tokenizer and worker config (bad data raises DataError before
                  any run folder exists)
run(...)       -> one `fit()` on Ray Train (or the same loop without Ray) -> run folder
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from palimpsest.data import DataError, QAExample, generate_world
from palimpsest.runners.common import (
    build_tokenizer, export_checkpoint, fit, load_dataset_spec, loop_config, subsample,
)
from palimpsest.train.batching import tokenize_qa
from palimpsest.train.config import LoopConfig
from palimpsest.runtime import RunFolder
from palimpsest.spec import TrainJob


@dataclass
class PreparedTrain:
    tokenizer: object
    worker_config: LoopConfig


def load_examples(data, seed: int) -> tuple[list[QAExample], dict[str, list[QAExample]]]:
    """Training examples and extra evaluation splits for a data spec."""
    extra: dict[str, list[QAExample]] = {}
    if data.source == "factworld":
        world = generate_world(seed=data.seed if data.seed is not None else seed,
                               num_entities=data.num_entities, attributes_per_entity=data.attributes_per_entity)
        if data.split == "all":
            return list(world.facts), extra
        splits = world.tofu_splits()
        if data.split != "holdout":
            extra["holdout"] = splits["holdout"]
        return splits[data.split], extra
    train = load_dataset_spec(data)
    if data.source == "file" and data.eval_path:
        extra["eval"] = load_dataset_spec(data.model_copy(update={"path": data.eval_path}))
    if data.source == "hf" and data.eval_split:
        extra["eval"] = load_dataset_spec(data.model_copy(update={"split": data.eval_split}))
    return train, extra


def prepare(spec: TrainJob, *, saved_tokenizer=None) -> PreparedTrain:
    """Load data, build the tokenizer and the worker config.

    Raises:
        DataError: the data cannot be loaded or is empty.
    """
    train, extra = load_examples(spec.data, spec.seed)
    if not train:
        raise DataError("data: the training set is empty")
    # Training data only: a tokenizer fitted to the eval sets would change the trained model.
    tokenizer = build_tokenizer(spec.model, train, saved=saved_tokenizer)
    eval_examples = {"train": subsample(train, spec.eval.max_examples)}
    if spec.eval.holdout or spec.data.source != "factworld":
        eval_examples.update({name: subsample(ex, spec.eval.max_examples) for name, ex in extra.items() if ex})
    config = loop_config(spec, tokenizer, tasks=[train],
                         eval_sets={name: tokenize_qa(tokenizer, ex) for name, ex in eval_examples.items()})
    return PreparedTrain(tokenizer, config)


def run(spec: TrainJob, prepared: PreparedTrain, folder: RunFolder, *, use_ray: bool = True) -> dict:
    """Train, then write checkpoints/final (model + tokenizer), metrics.jsonl and the summary."""
    prepared.tokenizer.save_pretrained(str(folder.tokenizer))
    started = time.perf_counter()
    output, checkpoints = fit(spec, prepared.worker_config, folder, folder.path.name, use_ray=use_ray)
    export_checkpoint(checkpoints[-1][0], folder.checkpoints / "final", prepared.tokenizer)
    (result,) = output["methods"]
    folder.write_metrics(result["records"])
    params = result["parameters"]["total"]
    return {
        "status": "ok",
        "kind": "train",
        "name": spec.name,
        "seed": spec.seed,
        "steps": output["steps"],
        "final": result["task_end"][-1],
        "parameters": result["parameters"],
        "checkpoint": "checkpoints/final",
        "cost": {
            "wall_s": round(time.perf_counter() - started, 3),
            "train_wall_s": round(result["wall_s"], 3),
            "train_tokens": result["train_tokens"],
            # 6·N·D: forward + backward FLOPs of a dense transformer (Kaplan et al., 2020).
            "train_flops": 6 * params * result["train_tokens"],
        },
    }
