"""One optimizer step of the shared loop: shard the global batch, accumulate, sync, step.

The global batch (a `StepBatch` of named parts, the same on every rank) is flattened
part by part and cut into one contiguous slice per rank (equal slices, except under a
backend that samples uneven batches: DP-SGD's Poisson draws); each slice is cut into
`grad_accum` strided micro-batches. The method turns each micro-batch's outputs into a
loss; the backend syncs gradients on the last micro-batch; the method sees the synced
gradients (`after_backward`) before the backend clips and steps.
"""

from __future__ import annotations

import functools
import inspect

import torch

from palimpsest.models import unwrap
from palimpsest.train.backend_base import Backend
from palimpsest.train.batching import collate_qa, token_losses
from palimpsest.train.hooks import TASK_PART, LoopContext, MicroBatch, StepBatch, TrainingMethod
from palimpsest.train.packing import pack_qa, unpack
from palimpsest.train.sampling import shard_for_rank


def train_step(ctx: LoopContext, method: TrainingMethod, backend: Backend, batch: StepBatch, *,
               accumulation: int, window: torch.Tensor) -> torch.Tensor:
    """Forward, backward and step on `batch`; adds (answer NLL sum, answer tokens) to `window`.

    Returns the pre-clip global gradient norm as a tensor (no host sync in the step).
    """
    flat = batch.flat()
    if not backend.uneven_batches and len(flat) % (ctx.world_size * accumulation):
        raise ValueError(f"a global batch of {len(flat)} examples does not split over {ctx.world_size} workers × "
                         f"{accumulation} accumulation steps")
    mine = shard_for_rank(flat, rank=ctx.rank, world_size=ctx.world_size)
    model = backend.model
    for k in range(accumulation):
        chunk = list(mine[k::accumulation])
        weights = [1.0] * len(chunk)
        if not chunk:  # a Poisson draw left this micro-batch empty: one zero-weight row keeps collectives in step
            chunk, weights = [(TASK_PART, ctx.tasks[ctx.task][0])], [0.0]
        examples = [item for _, item in chunk]
        inputs = {key: value.to(ctx.device) for key, value in
                  collate_qa(examples, pad_id=ctx.pad_id, eos_id=ctx.eos_id).items()}
        row_weights = torch.tensor(weights, device=ctx.device)
        with backend.accumulating(k == accumulation - 1):
            with backend.autocast():  # the forward and the method's loss; backward outside, as torch's AMP
                if backend.packing_row_tokens:  # the model sees packed rows; the method, the padded layout
                    outputs, losses, mask = _packed_forward(model, examples, ctx, backend.packing_row_tokens)
                else:
                    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                    **_logits_window(method, model, chunk, inputs["input_ids"].size(1)))
                    losses, mask = token_losses(outputs.logits.float(), inputs["labels"])
                micro = MicroBatch(inputs=inputs, part_of_row=[part for part, _ in chunk], token_losses=losses,
                                   token_mask=mask, step_batch=batch, world_size=ctx.world_size,
                                   accumulation=accumulation, reduction=backend.loss_reduction,
                                   row_weights=row_weights)
                loss = method.loss(ctx, model, micro, outputs)
            backend.backward(loss)
        counted = torch.stack([(losses.detach().sum(dim=1) * row_weights).sum().double(),
                               (mask.sum(dim=1) * row_weights).sum().double()])
        window += counted.to(window.device)
    method.after_backward(ctx)
    return backend.step()


def _packed_forward(model, examples, ctx: LoopContext, row_tokens: int):
    """The forward on packed rows; per-example token losses and mask in the padded (B, L-1) layout.

    The returned outputs are the packed ones: methods that read `outputs` are refused with
    packing (`MethodInfo.packing_reason`).
    """
    packed = pack_qa(examples, pad_id=ctx.pad_id, eos_id=ctx.eos_id, row_tokens=row_tokens)
    # No cache: transformers reads restarting position ids as packed examples only without one.
    outputs = model(input_ids=packed.input_ids.to(ctx.device), position_ids=packed.position_ids.to(ctx.device),
                    use_cache=False)
    losses, mask = token_losses(outputs.logits.float(), packed.labels.to(ctx.device))
    return outputs, unpack(losses, packed), unpack(mask, packed)


def _logits_window(method: TrainingMethod, model, chunk: list, width: int) -> dict:
    """`logits_to_keep`: the positions from the first that predicts a label (the shortest prompt's last token).

    The language-model head and the loss over the prompt positions before it would be
    discarded work: with a large vocabulary they are much of a small model's step.
    """
    if method.full_logits or not _keeps_logits(type(_base(model))):
        return {}
    keep = width - (min(len(item.prompt) for _, item in chunk) - 1)
    return {"logits_to_keep": keep} if 0 < keep < width else {}


def _base(model):
    """The transformers model under the wrappers (DDP, DeepSpeed, Opacus; peft's LoRA)."""
    model = unwrap(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@functools.lru_cache(maxsize=None)
def _keeps_logits(cls) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters
