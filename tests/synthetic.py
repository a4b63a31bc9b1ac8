"""Synthetic token-level tasks and loop configs shared by the training-loop and method tests."""

from __future__ import annotations

import numpy as np

from palimpsest.catalog import methods_of
from palimpsest.models import build_model, model_config
from palimpsest.train.batching import TokenizedQA
from palimpsest.train.config import Evaluation, LoopConfig, MethodRun, Optimisation

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


def tiny_model_cfg(seed: int = 0, **model) -> dict:
    return model_config({"preset": "tiny-llama", **model}, vocab_size=VOCAB, pad_id=PAD, bos_id=BOS, eos_id=EOS,
                        seed=seed)


def tiny_model(seed: int = 0, **model):
    return build_model(tiny_model_cfg(seed, **model))


def method_run(name: str, **params) -> MethodRun:
    """A registered continual method with `params` over its declared defaults."""
    info = methods_of("continual")[name]
    problems = info.check_params(params)
    assert not problems, problems
    return MethodRun(info.name, info.module, info.implementation, info.resolve(params))


def make_method(name: str, **params):
    return method_run(name, **params).build()


def loop_config(tasks: list[list[TokenizedQA]] | None = None, *, steps: int = 40, method: dict | None = None,
                methods: list[MethodRun] | None = None, general=(), eval_every: int | None = 20,
                **training) -> LoopConfig:
    """A LoopConfig for `run_without_ray`: one task (a plain train job) or a stream of tasks."""
    tasks = tasks if tasks is not None else [qa_items()]
    stream = len(tasks) > 1 or method is not None or methods is not None
    if method is not None:
        methods = [method_run(method["name"], **method.get("params", {}))]
    settings = {"steps": steps, "batch_size": 8, "lr": 1e-2, "lr_schedule": "constant", **training}
    common = dict(seed=3, model=tiny_model_cfg(), optimisation=Optimisation(**settings), threads=1)
    if stream:
        names = [f"task{i}" for i in range(len(tasks))]
        return LoopConfig(**common, evaluation=Evaluation(every=eval_every, batch_size=16, periodic="seen",
                                                          baseline="initial"),
                          tasks=tasks, eval_sets=dict(zip(names, tasks)), task_eval_names=names,
                          general=list(general), **({"methods": methods} if methods else {}))
    return LoopConfig(**common, evaluation=Evaluation(every=eval_every, batch_size=16, periodic="all"),
                      tasks=tasks, eval_sets={"train": tasks[0]})
