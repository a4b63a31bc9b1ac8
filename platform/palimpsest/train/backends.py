"""Training backends: how the model is wrapped, gradients synchronised and the optimizer stepped.

`ddp` here, `deepspeed` in deepspeed_backend.py; Opacus DP-SGD slots in as one more
`Backend` with the same methods, so the loop never changes. Two extension points exist
for it: `choose_batch` (DP-SGD draws Poisson-sampled batches instead of the method's) and
`carry_over` (state that lasts the whole run, such as a privacy accountant: a new backend
wraps each task's model, and the loop hands it the previous backend's carried state and
keeps that state in every checkpoint).
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import get_scheduler

from palimpsest.models import unwrap
from palimpsest.train.config import Optimisation
from palimpsest.train.hooks import token_mean_share


def adamw(params, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """torch AdamW, fused where the parameters allow (one kernel for every tensor: what `Trainer` uses)."""
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


class Backend:
    """Owns the wrapped model, the optimizer and the LR schedule."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    # True when each rank holds only a shard of the weights (ZeRO-3): every rank must then
    # run the same forward passes, and a full state dict needs a collective gather.
    shards_parameters: bool = False

    # How a micro-batch's token losses become this rank's loss (see `MicroBatch.reduction`).
    loss_reduction = staticmethod(token_mean_share)
    # False: the global batch is cut into equal shards (its size must divide); True: shards
    # may differ by one example and be empty (Poisson-sampled batches).
    uneven_batches: bool = False

    def choose_batch(self, method, ctx, step: int):
        """The global batch of `step`: the method's, unless the backend must sample its own."""
        return method.batch(ctx, step)

    def carry_over(self) -> dict:
        """State that outlives this task's backend (handed to the next one, checkpointed)."""
        return {}

    def progress(self) -> dict[str, float]:
        """Figures logged beside the training loss on rank 0 (DP-SGD: ε spent so far)."""
        return {}

    def learning_rate(self) -> float:
        """The learning rate the next optimizer step uses."""
        return float(self.optimizer.param_groups[0]["lr"])

    def full_state_dict(self) -> dict:
        """The whole model's state dict (every rank must call: it may gather shards)."""
        return unwrap(self.model).state_dict()

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def accumulating(self, is_last_micro_batch: bool):
        """Context for one micro-batch: skip gradient sync except on the last."""
        return contextlib.nullcontext()

    def step(self) -> torch.Tensor | float:
        """Clip, step, schedule, zero grads; returns the pre-clip global grad norm (a tensor: no host sync)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release hooks and buffers at the end of a task (a new backend wraps the next one)."""


class DDPBackend(Backend):
    """torch DistributedDataParallel (gloo on CPU, NCCL on GPU); plain module at world size 1."""

    def __init__(self, model: torch.nn.Module, training: Optimisation, *, world_size: int, device: torch.device,
                 carried: dict | None = None):
        model = model.to(device)
        if world_size > 1:
            device_ids = [device.index] if device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        self.model = model
        self.max_grad_norm = training.max_grad_norm
        self.params = [p for p in unwrap(model).parameters() if p.requires_grad]
        self.optimizer = adamw(self.params, lr=training.lr, weight_decay=training.weight_decay)
        self.scheduler = get_scheduler(training.lr_schedule, self.optimizer, num_warmup_steps=training.warmup_steps,
                                       num_training_steps=training.steps)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def accumulating(self, is_last_micro_batch: bool):
        if isinstance(self.model, DistributedDataParallel) and not is_last_micro_batch:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def step(self) -> torch.Tensor:
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def make_backend(model: torch.nn.Module, training: Optimisation, *, world_size: int, device,
                 carried: dict | None = None, privacy=None, noise_seed: int | None = None,
                 people: list | None = None) -> Backend:
    """The backend `training.backend` names (DP-SGD when `privacy` is a plan), wrapping `model` for one task.

    `noise_seed`: what a private backend draws its noise and Poisson batches from (the
    method's secret, or the public seed of a `reproducible` run). `people`: per task, each
    person's item indices (person-level privacy samples people, then one example each).
    """
    if privacy is not None:  # imported only when asked for: opacus is slow to import
        from palimpsest.train.private_backend import PrivateBackend

        if noise_seed is None:
            raise ValueError("a private backend needs its noise_seed (the run's secret or, reproducible, its seed)")
        return PrivateBackend(model, training, privacy, world_size=world_size, device=device, carried=carried,
                              noise_seed=noise_seed, people=people)
    if training.backend == "deepspeed":  # imported only when asked for: deepspeed is slow to import
        from palimpsest.train.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(model, training, world_size=world_size, device=device)
    return DDPBackend(model, training, world_size=world_size, device=device, carried=carried)
