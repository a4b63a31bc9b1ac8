"""`fpf`: k-FPF — naive training plus periodic finetuning of forgetting-prone modules on a buffer.

Zhao, Zhou, Long, Jiang & Zhang, "Does Continual Learning Equally Forget All
Parameters?", ICML 2023. The paper finds that forgetting concentrates in a few
task-specific modules and proposes FPF (finetune only those modules on a small replay
buffer) and k-FPF: plain SGD on the current task with no every-step replay, plus FPF
triggered periodically during training regardless of task boundaries. This file
implements k-FPF with the cross-entropy FPF objective (the paper's k-FPF-CE; the
logit-distillation variant k-FPF-KD is not implemented):

* buffer: reservoir sampling (Vitter's Algorithm R, as in `replay`) over every finished
  task's examples, so the buffer holds old-task samples only until the task ends;
* FPF modules: ranked by a sensitivity score on the buffer — the mean over a module's
  parameters of the per-example squared gradient of the answer loss (diagonal empirical
  Fisher, s_m = (1/|θ_m|) Σ_{i∈m} E[(∂ℓ/∂θ_i)²]) — and the top `fraction` of modules are
  finetuned. Re-scored at the first FPF phase of each task, kept in `state_dict()`;
* FPF phase: every `every_k` optimizer steps, and once at the task's end (after the
  task's examples enter the buffer), `fpf_steps` plain SGD steps with learning rate `lr`
  on random buffer batches, updating only the FPF modules' parameters.

The FPF batch is a pure function of (seed, task, step), every rank computes its shard's
gradient on the unwrapped model and the gradients are summed with `all_reduce`, so all
ranks apply the same update and a resumed run replays it exactly.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist

from palimpsest.continual import register
from palimpsest.continual.base import ContinualMethod, LoopState, hash_seed
from palimpsest.continual.ewc import diagonal_fisher
from palimpsest.train.batching import collate_qa, token_losses

TASK_END = -1  # the step key of the FPF phase run by after_task


def module_of(param_name: str) -> str:
    """The module a parameter belongs to ("model.norm.weight" -> "model.norm")."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def module_sensitivity(squared_grads: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per module, the mean over its parameters of the (per-example mean) squared gradient."""
    totals: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for name, value in squared_grads.items():
        module = module_of(name)
        totals[module] = totals.get(module, 0.0) + float(value.double().sum())
        sizes[module] = sizes.get(module, 0) + value.numel()
    return {m: totals[m] / sizes[m] for m in totals}


def select_top_fraction(scores: dict[str, float], fraction: float) -> list[str]:
    """The round(fraction · n) (at least one) highest-scoring names; ties go to the earlier name."""
    count = min(len(scores), max(1, round(fraction * len(scores))))
    return sorted(scores, key=lambda m: (-scores[m], m))[:count]


def reservoir_add(buffer: list, seen: int, new_items, *, capacity: int, rng: random.Random) -> int:
    """Stream `new_items` through Algorithm R (in place); returns the new count of items seen."""
    for item in new_items:
        seen += 1
        if len(buffer) < capacity:
            buffer.append(item)
        else:
            slot = rng.randrange(seen)
            if slot < capacity:
                buffer[slot] = item
    return seen


@register("fpf")
class KFPF(ContinualMethod):
    """k-FPF-CE: SGD on each task, periodic FPF of the most sensitive modules on a reservoir buffer.

    Args:
        buffer_size: examples kept over all past tasks.
        every_k: run an FPF phase after every `every_k` optimizer steps of a task.
        fpf_steps: SGD steps per FPF phase.
        lr: SGD learning rate of the FPF steps.
        fraction: share of modules (weight groups) finetuned by FPF.
        batch_size: buffer examples per FPF step (default: the training batch size).
        sensitivity_samples: buffer examples used to score module sensitivity.
    """

    def __init__(self, buffer_size: int = 64, every_k: int = 10, fpf_steps: int = 5, lr: float = 0.05,
                 fraction: float = 0.1, batch_size: int | None = None, sensitivity_samples: int = 32):
        problems = []
        if buffer_size < 1:
            problems.append("buffer_size ≥ 1")
        if every_k < 1:
            problems.append("every_k ≥ 1")
        if fpf_steps < 0:
            problems.append("fpf_steps ≥ 0")
        if lr <= 0:
            problems.append("lr > 0")
        if not 0 < fraction <= 1:
            problems.append("0 < fraction ≤ 1")
        if batch_size is not None and batch_size < 1:
            problems.append("batch_size ≥ 1")
        if sensitivity_samples < 1:
            problems.append("sensitivity_samples ≥ 1")
        if problems:
            raise ValueError("fpf: needs " + ", ".join(problems))
        self.buffer_size, self.every_k, self.fpf_steps, self.lr = buffer_size, every_k, fpf_steps, lr
        self.fraction, self.batch_size, self.sensitivity_samples = fraction, batch_size, sensitivity_samples
        self.buffer: list[tuple[int, int]] = []  # (task, index) references: small to checkpoint
        self.seen = 0
        self.fpf_modules: list[str] = []
        self.scored_task: int | None = None  # the task whose FPF phases use `fpf_modules`

    # ------------------------------------------------------------------ hooks
    def after_step(self, state: LoopState, step: int) -> None:
        # The last step is followed by after_task's own phase; skip it here so it runs once.
        if step % self.every_k == 0 and step < state.steps_per_task:
            self.fpf_phase(state, step)

    def after_task(self, state: LoopState) -> None:
        finished = ((state.task, i) for i in range(len(state.tasks[state.task])))
        self.seen = reservoir_add(self.buffer, self.seen, finished, capacity=self.buffer_size,
                                  rng=random.Random(hash_seed(state.seed, state.task)))
        self.fpf_phase(state, TASK_END)

    # ------------------------------------------------------------------ FPF
    def fpf_phase(self, state: LoopState, step: int) -> None:
        """`fpf_steps` SGD steps on buffer batches that move only the FPF modules' parameters."""
        if not self.buffer or self.fpf_steps == 0:
            return
        if self.scored_task != state.task:
            self.fpf_modules = self.score_modules(state)
            self.scored_task = state.task
        chosen = set(self.fpf_modules)
        params = [p for n, p in state.model.named_parameters() if module_of(n) in chosen]
        batch_size = self.batch_size or state.batch_size
        rng = np.random.default_rng([state.seed, state.task, step % (1 << 32)])
        was_training = state.model.training
        state.model.train()
        for _ in range(self.fpf_steps):
            picks = rng.choice(len(self.buffer), size=batch_size, replace=len(self.buffer) < batch_size)
            items = [state.tasks[t][i] for t, i in (self.buffer[p] for p in picks)]
            grads = self.buffer_gradient(state, items, params)
            with torch.no_grad():
                for param, grad in zip(params, grads):
                    param.sub_(self.lr * grad)
        state.model.train(was_training)

    def buffer_gradient(self, state: LoopState, items, params) -> list[torch.Tensor]:
        """Gradient of the global token-mean answer loss of `items` w.r.t. `params`, identical on every rank."""
        global_tokens = sum(len(it.answer) + 1 for it in items)
        mine = items[state.rank::state.world_size]
        if mine:
            batch = {k: v.to(state.device) for k, v in collate_qa(mine, pad_id=state.pad_id,
                                                                  eos_id=state.eos_id).items()}
            logits = state.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            losses, _ = token_losses(logits, batch["labels"])
            # autograd.grad leaves .grad untouched, so the main optimizer's state is not disturbed.
            grads = list(torch.autograd.grad(losses.sum() / global_tokens, params, allow_unused=True))
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        else:
            grads = [torch.zeros_like(p) for p in params]
        if state.world_size > 1 and dist.is_initialized():
            for grad in grads:
                dist.all_reduce(grad)  # shard sums -> the full batch's gradient on every rank
        return grads

    def score_modules(self, state: LoopState) -> list[str]:
        """The FPF modules: highest mean squared per-example gradient on (part of) the buffer."""
        items = [state.tasks[t][i] for t, i in self.buffer[: self.sensitivity_samples]]
        squared = diagonal_fisher(state.model, items, pad_id=state.pad_id, eos_id=state.eos_id, device=state.device,
                                  rank=state.rank, world_size=state.world_size)
        return select_top_fraction(module_sensitivity(squared), self.fraction)

    def state_dict(self) -> dict:
        return {"buffer": list(self.buffer), "seen": self.seen, "fpf_modules": list(self.fpf_modules),
                "scored_task": self.scored_task}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = [tuple(x) for x in state["buffer"]]
        self.seen, self.fpf_modules = state["seen"], list(state["fpf_modules"])
        self.scored_task = state["scored_task"]
