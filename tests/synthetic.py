"""Synthetic token-level tasks and loop configs shared by the training-loop and method tests."""

from __future__ import annotations

import numpy as np

from palimpsest.models import build_model, model_config
from palimpsest.train.batching import TokenizedQA

PAD, BOS, EOS, VOCAB = 0, 1, 2, 48


def qa_items(n: int = 24, seed: int = 0) -> list[TokenizedQA]:
    """Random prompts (bos + 2-6 tokens) with random 1-3 token answers."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        prompt = (BOS, *rng.integers(3, VOCAB, size=rng.integers(3, 7)).tolist())
        answer = tuple(rng.integers(3, VOCAB, size=rng.integers(1, 4)).tolist())
        items.append(TokenizedQA(prompt, answer))
    return items


def tiny_model_cfg(seed: int = 0) -> dict:
    return model_config({"preset": "tiny-llama"}, vocab_size=VOCAB, pad_id=PAD, bos_id=BOS, eos_id=EOS, seed=seed)


def tiny_model(seed: int = 0):
    return build_model(tiny_model_cfg(seed))


def raw(items) -> list[tuple]:
    return [(it.prompt, it.answer) for it in items]


def loop_config(tasks: list[list[TokenizedQA]] | None = None, *, steps: int = 40, method: dict | None = None,
                general=(), eval_every: int | None = 20, **training) -> dict:
    """A worker config for `run_without_ray`: one task (a plain train job) or a stream of tasks."""
    tasks = tasks if tasks is not None else [qa_items()]
    stream = len(tasks) > 1 or method is not None
    config = {
        "seed": 3,
        "model": tiny_model_cfg(),
        "training": {"steps": steps, "batch_size": 8, "grad_accum": 1, "lr": 1e-2, "weight_decay": 0.0,
                     "warmup_steps": 0, "lr_schedule": "constant", "max_grad_norm": 1.0, "backend": "ddp",
                     "log_every": 10, "checkpoint_every": None, **training},
        "eval": {"eval_every": eval_every, "batch_size": 16},
        "threads": 1,
        "tasks": [raw(task) for task in tasks],
    }
    if stream:
        names = [f"task{i}" for i in range(len(tasks))]
        config.update({"task_eval_names": names, "eval_sets": {n: raw(t) for n, t in zip(names, tasks)},
                       "periodic_eval": "seen", "general_items": raw(general), "method": method})
    else:
        config.update({"eval_sets": {"train": raw(tasks[0])}, "periodic_eval": "all"})
    return config
