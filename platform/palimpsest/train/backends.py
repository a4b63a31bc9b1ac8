"""Training backends: how the model is wrapped, gradients synchronised and the optimizer stepped.

`ddp` here, `deepspeed` in deepspeed_backend.py, Opacus DP-SGD in private_backend.py, all
subclasses of `backend_base.Backend`, so the loop never changes; `make_backend` picks one
(the other two are imported only when asked for: both are slow to import).
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import get_scheduler

from palimpsest.models import unwrap
from palimpsest.train.backend_base import Backend, adamw
from palimpsest.train.config import Optimisation
from palimpsest.train.speed import prepare_model, resolve_precision


class DDPBackend(Backend):
    """torch DistributedDataParallel (gloo on CPU, NCCL on GPU); plain module at world size 1.

    bf16 / fp16: the forward autocasts (`Backend.autocast`) and the weights, gradients and
    AdamW state stay fp32; fp16 scales the loss (torch's GradScaler) and skips a step whose
    gradients overflowed, as torch's own mixed-precision recipe does.
    """

    def __init__(self, model: torch.nn.Module, training: Optimisation, *, world_size: int, device: torch.device,
                 carried: dict | None = None):
        model = prepare_model(model.to(device), activation_checkpointing=training.activation_checkpointing,
                              compile=training.compile)
        self.precision = resolve_precision(training.precision, torch.device(device))
        self.scaler = torch.amp.GradScaler(torch.device(device).type) if self.precision == "fp16" else None
        self.packing_row_tokens = training.packing_row_tokens if training.packing else None
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
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def accumulating(self, is_last_micro_batch: bool):
        if isinstance(self.model, DistributedDataParallel) and not is_last_micro_batch:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def step(self) -> torch.Tensor:
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        if self.scaler is None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
            self.optimizer.step()
        else:  # clip the true gradients; an overflow (inf norm) skips the step and lowers the scale
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


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
