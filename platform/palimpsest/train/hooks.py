"""The hook interface every training method implements on the shared loop.

The loop owns this interface and imports no method package; a method is one file that
declares itself (`palimpsest.train.methods.MethodInfo`) and subclasses `TrainingMethod`.
Per task the loop calls:

    [prepare_model(ctx)]                               on a resume: rebuild kept modules
    before_task(ctx)                                   prepare (may replace ctx.model)
    for each optimizer step:
        batch(ctx, step) -> StepBatch                  the global batch, as named parts
        for each micro-batch of this rank's shard:
            loss(ctx, model, micro, outputs)           this rank's loss (default: answer NLL)
        after_backward(ctx)                            gradients synced, before clipping/step
        (clip, optimizer step)
        after_step(ctx, step, batch)
    after_task(ctx)
    state_dict() / load_state_dict()                   everything needed to resume exactly

A backend may take over the batch source and the loss reduction (DP-SGD samples its own
batches and reduces per-sample losses its own way): see `train/backends.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from palimpsest.train.batching import TokenizedQA, normalised_loss
from palimpsest.train.sampling import derive_seed, global_batch_indices

TASK_PART = "task"  # the name of the current task's part of a batch


@dataclass
class LoopContext:
    """What a method sees of the loop. `model` is the unwrapped model (no DDP/DeepSpeed wrapper)."""

    model: torch.nn.Module
    tasks: list[list[TokenizedQA]]
    task: int
    seed: int
    batch_size: int
    steps_per_task: int
    pad_id: int
    eos_id: int
    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1
    # General (non-task) samples a method may train on; never the general evaluation set.
    general: list[TokenizedQA] = field(default_factory=list)
    # This task's named pools a method may train on (unlearning: "retain", what remains
    # after the current forget request). Set by the loop at each task.
    pools: dict[str, list[TokenizedQA]] = field(default_factory=dict)
    # Named models a method may start a task from, as `palimpsest.models.model_config`
    # dicts (unlearning: "base", what the target was trained from, and "target").
    models: dict[str, dict] = field(default_factory=dict)
    lr: float = 0.0  # the learning rate of the step being taken (set by the loop before each step)

    @property
    def total_steps(self) -> int:
        return self.steps_per_task * len(self.tasks)

    def stream_step(self, step: int) -> int:
        """Optimizer steps taken over the whole stream once `step` steps of the current task are done."""
        return self.task * self.steps_per_task + step

    def task_batch_indices(self, step: int, size: int | None = None) -> list[int]:
        """Indices into the current task of `step`'s examples: seeded epochs, `size` (default batch_size)."""
        return global_batch_indices(step, num_examples=len(self.tasks[self.task]), batch_size=self.batch_size if size is None else size,
                                    seed=derive_seed(self.seed, "task-order", self.task)).tolist()

    def task_batch(self, step: int, size: int | None = None) -> list[TokenizedQA]:
        """The current task's examples for `step` (see `task_batch_indices`)."""
        items = self.tasks[self.task]
        return [items[i] for i in self.task_batch_indices(step, size)]

    def pool_batch(self, name: str, step: int, size: int | None = None, *, stream: int = 0) -> list[TokenizedQA]:
        """`size` (default batch_size) examples of this task's pool `name` for `step`: seeded epochs over the pool.

        `stream`: another seeded order of the same pool (0: the run's own).
        """
        items = self.pools.get(name) or []
        if not items:
            raise ValueError(f"this run has no examples in pool {name!r} for task {self.task}")
        keys = (self.task, stream) if stream else (self.task,)
        chosen = global_batch_indices(step, num_examples=len(items), batch_size=self.batch_size if size is None else size,
                                      seed=derive_seed(self.seed, f"pool-{name}", *keys))
        return [items[i] for i in chosen.tolist()]

    def fresh_model(self, name: str) -> torch.nn.Module:
        """A new copy of the run's model `name` (see `models`) on this device."""
        from palimpsest.models import build_model

        if name not in self.models:
            raise ValueError(f"this run has no model named {name!r} (it has: {', '.join(self.models) or 'none'})")
        return build_model(self.models[name]).to(self.device)


@dataclass(frozen=True)
class StepBatch:
    """The global batch of one optimizer step, as named parts ("task", "memory", "forget", ...).

    Every rank builds the same StepBatch; the loop shards the parts, in order, over ranks.
    """

    parts: dict[str, list[TokenizedQA]]

    @classmethod
    def of_task(cls, items: list[TokenizedQA]) -> "StepBatch":
        return cls({TASK_PART: list(items)})

    def flat(self) -> list[tuple[str, TokenizedQA]]:
        return [(name, item) for name, items in self.parts.items() for item in items]

    def answer_tokens(self, part: str | None = None) -> int:
        """Labelled tokens (answer + eos) of one part, or of all parts, over the whole global batch."""
        chosen = self.parts.values() if part is None else [self.parts.get(part, [])]
        return sum(len(item.answer) + 1 for items in chosen for item in items)

    def __len__(self) -> int:
        return sum(len(items) for items in self.parts.values())


def token_mean_share(token_losses, token_mask, row_weights, global_tokens: int, world_size: int) -> torch.Tensor:
    """This rank's share of the mean NLL over every answer token of the global batch (see `normalised_loss`)."""
    return normalised_loss(token_losses.sum(), global_tokens, world_size)


def per_example_loss(token_losses, token_mask, row_weights, global_tokens: int, world_size: int) -> torch.Tensor:
    """(B,) each example's mean answer-token NLL, zero for placeholder rows: what DP-SGD clips per example."""
    return token_losses.sum(dim=1) / token_mask.sum(dim=1).clamp(min=1) * row_weights


@dataclass
class MicroBatch:
    """One micro-batch of this rank's shard, with the token losses the loop already computed."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, labels (on the device)
    part_of_row: list[str]
    token_losses: torch.Tensor  # (B, P): the positions whose logits were computed, zero where unlabelled
    token_mask: torch.Tensor  # (B, P) bool
    step_batch: StepBatch  # the global batch this micro-batch belongs to
    world_size: int
    accumulation: int
    # How token losses become this rank's loss: (token_losses, token_mask, row_weights, global
    # answer tokens, world size) -> loss. The default is the share of the global token mean;
    # a backend may replace it (DP-SGD: one loss per example, see `per_example_loss`).
    reduction: Callable[..., torch.Tensor] = token_mean_share
    # (B,) 1.0 for real rows, 0.0 for a placeholder row (a rank with no examples in a
    # Poisson-sampled step still runs the forward and backward passes its collectives need).
    row_weights: torch.Tensor | None = None

    def __post_init__(self):
        if self.row_weights is None:
            self.row_weights = torch.ones(self.token_losses.shape[0], device=self.token_losses.device)

    def rows(self, part: str) -> torch.Tensor:
        """(B,) bool: the rows of this micro-batch that belong to `part`."""
        return torch.tensor([p == part for p in self.part_of_row], device=self.token_losses.device)

    def nll(self, part: str | None = None) -> torch.Tensor:
        """Answer-token NLL of `part` (or all parts) as a share of the global token mean.

        Summed over micro-batches and averaged over ranks (what DDP does), this gives the
        mean NLL over every answer token of that part in the whole global batch.
        """
        rows = slice(None) if part is None else self.rows(part)
        return self.reduction(self.token_losses[rows], self.token_mask[rows], self.row_weights[rows],
                              self.step_batch.answer_tokens(part), self.world_size)

    def sequence_log_likelihood(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row of `part` in this micro-batch: log p(answer + eos | prompt) and its token count.

        The same quantity as `batching.sequence_log_likelihood`, from the losses the loop
        already computed (NPO's and GradDiff's per-sequence terms read it).
        """
        rows = self.rows(part)
        return -self.token_losses[rows].sum(dim=1), self.token_mask[rows].sum(dim=1)

    def item_mean(self, part: str, item_sum: torch.Tensor) -> torch.Tensor:
        """This rank's share of the mean of a per-item loss over every item of `part` in the global batch.

        `item_sum` is the loss summed over this micro-batch's rows of `part` (possibly none).
        Summed over micro-batches and averaged over ranks it gives the global item mean.
        """
        return normalised_loss(item_sum, len(self.step_batch.parts.get(part, [])), self.world_size)

    def once_per_step(self, term: torch.Tensor) -> torch.Tensor:
        """A term every micro-batch adds in full (a penalty on the weights) counted once per step."""
        return term / self.accumulation


class TrainingMethod:
    """Plain fine-tuning on the current task; subclasses override the hooks they need.

    A method decides things once (which tensors to train, which samples to keep) and keeps
    those decisions in `state_dict()`, so a restart mid-task rebuilds the same setup.
    """

    name = "naive"
    # False: the loop computes logits only from the first position any row of a micro-batch
    # predicts a label at (`train_step`): `outputs.logits` covers those positions alone. A
    # method that reads logits at other positions (LwF's distillation) sets True.
    full_logits = False

    def before_task(self, ctx: LoopContext) -> None:
        """Prepare the model for task `ctx.task` (may replace `ctx.model`).

        On a resume in the middle of a task the loop calls this BEFORE loading the saved
        weights: never derive state from the model's current weights here; derive it in
        `after_task` of the previous task and keep it in `state_dict()`.
        """

    def prepare_model(self, ctx: LoopContext) -> None:
        """On a resume only, before the saved weights load: give `ctx.model` the structure they need.

        A method that keeps modules across tasks (GS-LoRA's adapter per request) adds
        those of the finished tasks here (tasks 0..ctx.task−1), as they were when saved.
        """

    def batch(self, ctx: LoopContext, step: int) -> StepBatch:
        """The global batch for `step` (0-based within the task), the same on every rank."""
        return StepBatch.of_task(ctx.task_batch(step))

    def loss(self, ctx: LoopContext, model: torch.nn.Module, micro: MicroBatch, outputs) -> torch.Tensor:
        """This rank's loss for one micro-batch (`model` is the wrapped model that produced `outputs`).

        Default: the answer-token NLL of every part together.
        """
        return micro.nll()

    def after_backward(self, ctx: LoopContext) -> None:
        """Gradients of the whole step are in `.grad` (synced over ranks), before clipping and the step."""

    def after_step(self, ctx: LoopContext, step: int, batch: StepBatch) -> None:
        """Called after each optimizer step (`step` is 1-based within the task)."""

    def after_task(self, ctx: LoopContext) -> None:
        """Called once the task's last step is done, before the task-end evaluation."""

    def progress(self) -> dict[str, float]:
        """Figures logged beside the training loss on rank 0 (GU: how orthogonal its last step was)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
