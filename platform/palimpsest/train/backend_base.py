"""What every training backend provides (`Backend`), and the optimizer they share (`adamw`).

The backends (`ddp` in backends.py, `deepspeed` in deepspeed_backend.py, DP-SGD in
private_backend.py) subclass `Backend`; `backends.make_backend` picks one. Two extension
points: `choose_batch` (DP-SGD draws Poisson-sampled batches instead of the method's) and
`carry_over` (state that lasts the whole run, such as a privacy accountant: a new backend
wraps each task's model, and the loop hands it the previous backend's carried state and
keeps that state in every checkpoint).
"""

from __future__ import annotations

import contextlib

import torch

from palimpsest.models import unwrap
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

    # The precision the forward runs at (resolved: bf16, fp16 or fp32); see `autocast`.
    precision: str = "fp32"
    # training.packing: the forward sees the micro-batch packed into rows of at most this many
    # tokens (train/packing.py); None: padded rows.
    packing_row_tokens: int | None = None

    def autocast(self):
        """Context for a micro-batch's forward and loss: autocast at `precision` (DeepSpeed casts by itself)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        from palimpsest.train.speed import autocast

        return autocast(self.precision, next(unwrap(self.model).parameters()).device)

    def compute_precision(self) -> str:
        """What the forward runs at, for the run's summary (DeepSpeed: its own cast, not an autocast)."""
        return self.precision

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
