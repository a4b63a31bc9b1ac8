"""The small hook interface continual-learning methods implement on the shared loop.

The loop calls, per task t:  before_task -> (global_batch, extra_loss)×steps -> after_task.
A method changes only what it must; the defaults are naive sequential fine-tuning.
Methods decide things once (which tensors to train, which samples to keep) and keep
those decisions in `state_dict()`, so a restart mid-task rebuilds the same setup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from palimpsest.train.batching import TokenizedQA, global_batch_indices


@dataclass
class LoopState:
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
    general: list[TokenizedQA] = field(default_factory=list)


class ContinualMethod:
    """Naive sequential fine-tuning; subclasses override the hooks they need."""

    name = "naive"

    def __init__(self, **params):
        if params:
            raise TypeError(f"method '{self.name}' takes no parameters, got {sorted(params)}")

    def before_task(self, state: LoopState) -> None:
        """Prepare the model for task `state.task` (may replace `state.model`).

        On a resume in the middle of a task the loop calls this BEFORE loading the saved
        weights: never derive state from the model's current weights here; derive it in
        `after_task` of the previous task and keep it in `state_dict()`.
        """

    def global_batch(self, state: LoopState, step: int) -> list[TokenizedQA]:
        """The global batch for `step` of the current task (same on every rank)."""
        items = state.tasks[state.task]
        indices = global_batch_indices(step, num_examples=len(items), batch_size=state.batch_size,
                                       seed=hash_seed(state.seed, state.task))
        return [items[i] for i in indices]

    def extra_loss(self, state: LoopState, model: torch.nn.Module, batch: dict, outputs) -> torch.Tensor | None:
        """A regulariser added to this rank's task loss (DDP averages: give the full term on every rank)."""
        return None

    def after_step(self, state: LoopState, step: int) -> None:
        """Called after each optimizer step (step is 1-based within the task)."""

    def after_task(self, state: LoopState) -> None:
        """Called once the task's last step is done, before the task-end evaluation."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def hash_seed(seed: int, task: int) -> int:
    """A per-task data-order seed (stable across processes, unlike hash())."""
    return seed * 1_000_003 + task
