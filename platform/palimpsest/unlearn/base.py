"""What every unlearning method shares on the loop: forget and retain parts, a frozen copy of the start.

Each forget request is one task of the shared loop: `ctx.tasks[ctx.task]` holds the
request's items (the forget set) and `ctx.pools["retain"]` what remains of the training
data once every request so far is forgotten. A method's loss is a forget term plus a
retain term, kept apart (`forget_loss`, `retain_loss`) so the GU wrapper can project the
forget term's gradient alone (`unlearn/gu.py`).

This file declares no method (it has no `METHOD`); the method files build on it.
"""

from __future__ import annotations

import copy

import torch

from palimpsest.train.batching import sequence_log_likelihood
from palimpsest.train.config import Optimisation
from palimpsest.train.hooks import LoopContext, MicroBatch, StepBatch, TrainingMethod

FORGET, RETAIN = "forget", "retain"


class UnlearningMethod(TrainingMethod):
    """Forget term on the request's items, plus `retain_weight` × the answer NLL on a retain batch.

    Each step's batch is `batch_size` forget items and, when the retain term is on,
    `batch_size` retain items (open-unlearning draws them the same way).
    """

    retain_weight: float = 0.0

    def schedule(self, unlearning: Optimisation, original: Optimisation) -> Optimisation:
        """How this method trains each request: the unlearn job's `training`, or (retraining) the target's recipe."""
        return unlearning

    def uses_retain(self) -> bool:
        return self.retain_weight > 0

    def batch(self, ctx: LoopContext, step: int) -> StepBatch:
        parts = {FORGET: ctx.task_batch(step)}
        if self.uses_retain():
            parts[RETAIN] = ctx.pool_batch(RETAIN, step)
        return StepBatch(parts)

    def forget_loss(self, ctx: LoopContext, model, micro: MicroBatch, outputs) -> torch.Tensor:
        raise NotImplementedError

    def retain_loss(self, ctx: LoopContext, model, micro: MicroBatch, outputs) -> torch.Tensor:
        """`retain_weight` × the mean answer-token NLL over the batch's retain part (0 when off)."""
        if not self.uses_retain():
            return micro.token_losses.new_zeros(())
        return self.retain_weight * micro.nll(RETAIN)

    def loss(self, ctx: LoopContext, model, micro: MicroBatch, outputs) -> torch.Tensor:
        return self.forget_loss(ctx, model, micro, outputs) + self.retain_loss(ctx, model, micro, outputs)

    # A method's `FrozenStart` copies (NPO's reference, UNDIAL's teacher, RMU's frozen model) are taken as each
    # request begins and kept in its state under their attribute's name.
    def _frozen_starts(self) -> dict[str, FrozenStart]:
        return {name: value for name, value in vars(self).items() if isinstance(value, FrozenStart)}

    def before_task(self, ctx: LoopContext) -> None:
        for frozen in self._frozen_starts().values():
            frozen.take(ctx)

    def state_dict(self) -> dict:
        return {name: frozen.state_dict() for name, frozen in self._frozen_starts().items()}

    def load_state_dict(self, state: dict) -> None:
        for name, frozen in self._frozen_starts().items():
            frozen.load_state_dict(state.get(name, {}))


class FrozenStart:
    """A frozen copy of the model as the current request began (NPO's reference, RMU's frozen model).

    Taken in `before_task` when a request starts and kept in the method's state (`UnlearningMethod` does both for
    every FrozenStart a method holds), because
    a resume in the middle of a request calls `before_task` before the saved weights are
    loaded: the copy must come from the checkpoint then, not from the model.
    """

    def __init__(self):
        self.task: int | None = None
        self.model: torch.nn.Module | None = None
        self._saved: dict | None = None

    def take(self, ctx: LoopContext) -> torch.nn.Module:
        if self.task != ctx.task or self._saved is None:
            self._saved = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
            self.task = ctx.task
        model = copy.deepcopy(ctx.model)
        model.load_state_dict(self._saved)
        model.eval().requires_grad_(False)
        self.model = model
        return model

    def state_dict(self) -> dict:
        return {"task": self.task, "weights": self._saved}

    def load_state_dict(self, state: dict) -> None:
        self.task, self._saved = state.get("task"), state.get("weights")


class RetainTraining(UnlearningMethod):
    """Serve a request by training on what remains, from a named model of the run, with the target's recipe."""

    start_from = "base"

    def before_task(self, ctx: LoopContext) -> None:
        ctx.model = ctx.fresh_model(self.start_from)

    def batch(self, ctx: LoopContext, step: int) -> StepBatch:
        return StepBatch({RETAIN: ctx.pool_batch(RETAIN, step)})

    def loss(self, ctx: LoopContext, model, micro: MicroBatch, outputs) -> torch.Tensor:
        return micro.nll(RETAIN)


def answer_rows(micro: MicroBatch, part: str, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `part`: log p(answer + eos | prompt) under `model` (no gradient) and the token count."""
    rows = micro.rows(part)
    if not rows.any():  # this rank's shard holds none of `part` (the parts are sharded in order)
        empty = micro.token_losses.new_zeros(0)
        return empty, empty.long()
    with torch.no_grad():
        logits = model(input_ids=micro.inputs["input_ids"][rows],
                       attention_mask=micro.inputs["attention_mask"][rows]).logits
    return sequence_log_likelihood(logits, micro.inputs["labels"][rows])


def weighted_forget_nll(micro: MicroBatch, weights: torch.Tensor) -> torch.Tensor:
    """Σ over the forget answer tokens of weight × NLL, as this rank's share of the mean over every forget answer
    token of the global batch (what `micro.nll(FORGET)` is with weights 1). `weights`: (B, P), no gradient."""
    rows = micro.rows(FORGET)
    weighted = weights[rows] * micro.token_mask[rows] * micro.token_losses[rows]
    return micro.reduction(weighted, micro.token_mask[rows], micro.row_weights[rows],
                           micro.step_batch.answer_tokens(FORGET), micro.world_size)
