"""DeepSpeed ZeRO backend (stages 0-3) for the shared loop.

What we verified on CPU (docs/design.md, "DeepSpeed on CPU"): DeepSpeed reuses the process group Ray Train set
up; a client `torch.optim.AdamW` avoids the 3-4 min JIT compile of its fused Adams;
the `deepspeed_shm_comm` op would compile for ~67 s on first use, so we skip it (it
only speeds up intra-node CPU collectives).

Loss scaling: the loop already divides by the global answer-token count of the whole
optimizer step, so `engine.backward(..., scale_wrt_gas=False)`; DeepSpeed averages
gradients over data-parallel ranks exactly like DDP, so DDP and ZeRO give the same
updates. DeepSpeed counts micro-batches itself: `engine.step()` after every backward,
and it steps the optimizer (and the LR schedule) at the accumulation boundary.

ZeRO-3 partitions the weights themselves: the loop then evaluates the same examples on
every rank (forward passes must stay in lockstep), gathers the full state dict for
checkpoints (transformers format, rebuilt on rank 0 — not DeepSpeed's sharded format, so
a checkpoint loads anywhere), and rebuilds a plain model between tasks.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import get_scheduler

from palimpsest.train.backend_base import Backend, adamw
from palimpsest.train.config import Optimisation
from palimpsest.train.speed import prepare_model, resolve_precision


def _skip_shm_build() -> None:
    import deepspeed.comm.torch  # noqa: F401  (binds the package; the module is in sys.modules)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def _single_process_group() -> None:
    """Without Ray (world size 1) DeepSpeed still wants a process group: make a gloo one."""
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    # The rendezvous is a file, not the port above: a port probed free can be taken by another process
    # before the group binds it (two runs starting at once failed with EADDRINUSE).
    import tempfile

    rendezvous = Path(tempfile.mkdtemp(prefix="palimpsest-pg-")) / "store"
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", init_method=rendezvous.as_uri(), rank=0,
                            world_size=1)


def deepspeed_config(training: Optimisation, world_size: int, precision: str | None = None) -> dict:
    """DeepSpeed's config; `precision`: the resolved one (bf16, fp16, fp32), default training.precision."""
    precision = precision or training.precision
    accum = training.grad_accum
    return {
        "train_batch_size": training.batch_size,
        "train_micro_batch_size_per_gpu": training.batch_size // (world_size * accum),
        "gradient_accumulation_steps": accum,
        "gradient_clipping": training.max_grad_norm or 0.0,
        "zero_optimization": {"stage": training.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},  # with DeepSpeed's dynamic loss scaling
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class DeepSpeedBackend(Backend):
    """`deepspeed.initialize` around the model with a torch AdamW and the loop's LR schedule."""

    def __init__(self, model: torch.nn.Module, training: Optimisation, *, world_size: int, device: torch.device):
        import deepspeed

        _skip_shm_build()
        _single_process_group()
        # DeepSpeed's bf16 / fp16 modes cast the model themselves (fp32 master weights in the
        # optimizer): no autocast on top (`precision` stays fp32 for Backend.autocast).
        cast = resolve_precision(training.precision, torch.device(device))
        model = prepare_model(model, activation_checkpointing=training.activation_checkpointing, compile=False)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = adamw(params, lr=training.lr, weight_decay=training.weight_decay)
        scheduler = get_scheduler(training.lr_schedule, optimizer, num_warmup_steps=training.warmup_steps,
                                  num_training_steps=training.steps)
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model.to(device), optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(training, world_size, cast), dist_init_required=False,
        )
        self.model, self.optimizer, self.scheduler = engine, optimizer, scheduler
        self.shards_parameters = training.zero_stage == 3
        self.cast = cast
        self.packing_row_tokens = training.packing_row_tokens if training.packing else None

    def compute_precision(self) -> str:
        return self.cast

    def full_state_dict(self) -> dict:
        module = self.model.module
        if not self.shards_parameters:
            return module.state_dict()
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {name: tensor.detach().cpu().clone() for name, tensor in module.state_dict().items()}

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss, scale_wrt_gas=False)
        self.model.step()  # a no-op for the optimizer until the accumulation boundary

    def step(self) -> float:
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def state_dict(self) -> dict:
        # ZeRO shards the optimizer state over ranks, so a rank-0 copy would be incomplete:
        # a resume restores weights, position and the LR schedule (the same on every rank),
        # with fresh Adam moments. DDP restores the moments too.
        return {"scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        if state and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])

    def close(self) -> None:
        # ZeRO registers gradient hooks on the parameters; the next task's engine must
        # not find the old ones still attached.
        if hasattr(self.model, "destroy"):
            self.model.destroy()
