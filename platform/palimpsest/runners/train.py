"""`kind: train` — fine-tune a model on one dataset under the shared loop and evaluate it.

prepare(spec)  -> data, tokenizer and worker config (bad data raises DataError before
                  any run folder exists)
run(...)       -> one Ray Train `fit()` (or the same loop without Ray) -> run folder
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from palimpsest.data import DataError, QAExample, generate_world, load_hf_qa, load_qa_file, qa_texts, train_bpe_tokenizer
from palimpsest.models import model_config
from palimpsest.runtime import RunFolder
from palimpsest.spec import TrainJob


@dataclass
class PreparedTrain:
    tokenizer: object
    train_examples: list[QAExample]
    eval_examples: dict[str, list[QAExample]]
    worker_config: dict


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
    if data.source == "file":
        train = load_qa_file(data.path, question_key=data.question_key, answer_key=data.answer_key)
        if data.eval_path:
            extra["eval"] = load_qa_file(data.eval_path, question_key=data.question_key, answer_key=data.answer_key)
        return train, extra
    keys = dict(question_key=data.question_key, answer_key=data.answer_key, subset=data.subset,
                data_files=data.data_files)
    train = load_hf_qa(data.name, split=data.split, **keys)
    if data.eval_split:
        extra["eval"] = load_hf_qa(data.name, split=data.eval_split, **keys)
    return train, extra


def build_tokenizer(model_spec, texts: list[str]):
    """The pretrained model's tokenizer, an explicit one, or a BPE trained on the data."""
    source = model_spec.tokenizer or model_spec.pretrained
    if model_spec.pretrained and Path(model_spec.pretrained).is_dir() \
            and not (Path(model_spec.pretrained) / "config.json").is_file():
        raise DataError(f"model.pretrained: {model_spec.pretrained} has no config.json (not a transformers model folder)")
    if source:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise DataError(f"model: cannot load a tokenizer from {source}: {error}") from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return train_bpe_tokenizer(texts, vocab_size=model_spec.vocab_size)


def _subsample(examples: list, cap: int | None) -> list:
    if cap is None or len(examples) <= cap:
        return examples
    step = len(examples) / cap
    return [examples[int(i * step)] for i in range(cap)]


def prepare(spec: TrainJob) -> PreparedTrain:
    """Load data, build the tokenizer and the worker config.

    Raises:
        DataError: the data cannot be loaded or is empty.
    """
    from palimpsest.train.batching import PROMPT_TEMPLATE, tokenize_qa

    train, extra = load_examples(spec.data, spec.seed)
    if not train:
        raise DataError("data: the training set is empty")
    everything = train + [e for split in extra.values() for e in split]
    # Prompts are part of what the model reads: a BPE that has seen them spends fewer tokens.
    prompts = [PROMPT_TEMPLATE.format(question=e.question) for e in everything]
    tokenizer = build_tokenizer(spec.model, qa_texts(everything) + prompts)
    eval_examples = {"train": _subsample(train, spec.eval.max_examples)}
    if spec.eval.holdout or spec.data.source != "factworld":
        eval_examples.update({name: _subsample(ex, spec.eval.max_examples) for name, ex in extra.items() if ex})

    def as_items(examples):
        return [(it.prompt, it.answer) for it in tokenize_qa(tokenizer, examples)]

    config = {
        "seed": spec.seed,
        "task": 0,
        "model": model_config(spec.model.model_dump(), vocab_size=len(tokenizer), pad_id=tokenizer.pad_token_id,
                              bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, seed=spec.seed),
        "training": spec.training.model_dump(),
        "eval": spec.eval.model_dump(),
        "threads": max(1, int(spec.scaling.cpus_per_worker)),
        "tasks": [as_items(train)],
        "eval_sets": {name: as_items(ex) for name, ex in eval_examples.items()},
        "periodic_eval": "all",
    }
    return PreparedTrain(tokenizer, train, eval_examples, config)


def run(spec: TrainJob, prepared: PreparedTrain, folder: RunFolder, *, use_ray: bool = True) -> dict:
    """Train, then write checkpoints/final (model + tokenizer), metrics.jsonl and the summary."""
    prepared.tokenizer.save_pretrained(str(folder.tokenizer))
    started = time.perf_counter()
    if use_ray:
        output, checkpoint_dir = _fit_on_ray(spec, prepared.worker_config, folder)
    else:
        from palimpsest.train.loop import run_without_ray

        root = Path(spec.storage_path or folder.path / "ray") / folder.path.name
        output = run_without_ray(prepared.worker_config, root)
        checkpoint_dir = str(sorted(root.glob("checkpoint_*"))[-1])
    final_dir = folder.checkpoints / "final"
    shutil.copytree(checkpoint_dir, final_dir, ignore=shutil.ignore_patterns("trainer_state.pt"))
    prepared.tokenizer.save_pretrained(str(final_dir))
    folder.write_metrics(output["records"])
    wall = time.perf_counter() - started
    params = output["parameters"]["total"]
    return {
        "status": "ok",
        "kind": "train",
        "name": spec.name,
        "seed": spec.seed,
        "steps": output["steps"],
        "final": output["final"],
        "parameters": output["parameters"],
        "checkpoint": "checkpoints/final",
        "cost": {
            "wall_s": round(wall, 3),
            "train_wall_s": round(output["train_wall_s"], 3),
            "train_tokens": output["train_tokens"],
            # 6·N·D: forward + backward FLOPs of a dense transformer (Kaplan et al., 2020).
            "train_flops": 6 * params * output["train_tokens"],
        },
    }


def _fit_on_ray(spec: TrainJob, config: dict, folder: RunFolder) -> tuple[dict, str]:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from palimpsest.train.loop import train_loop_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker={"CPU": spec.scaling.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=folder.path.name,  # unique: a reused name would resume an old run
            storage_path=str(Path(spec.storage_path).resolve() if spec.storage_path else folder.path / "ray"),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray Train logs every report at INFO; our own progress lines say enough.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    return result.return_value, result.checkpoint.path
