"""`gere`: General Samples Replay with the threshold-based margin (TM) loss.

Zhang et al., "GeRe: Towards Efficient Anti-Forgetting in Continual Learning of LLM via
General Samples Replay", 2025 (arXiv 2508.04676; code github.com/Qznan/GeRe). A small,
fixed set of general (pre-training-like) texts is replayed in every task, and the TM loss
keeps each neuron's activation state on those texts what it was in the initial model.

Before task 0, the initial model's hidden states h⁰ on the general set give per-neuron
thresholds τ± = μ ± k·σ (mean and std over all tokens, per layer and dimension) and a
state per (sample, token, layer, neuron): +1 if h⁰ ≥ τ⁺, −1 if h⁰ ≤ τ⁻, else 0. During
training, with m the margin (0 in the authors' code),

    s = +1:  ℓ = [τ⁺ + m − h]₊
    s = −1:  ℓ = [h − τ⁻ + m]₊
    s =  0:  ℓ = [h − τ⁺ + m]₊ + [τ⁻ + m − h]₊
    L_TM = Σ ℓ / #{ℓ > 0}      (mean over the violating entries, as the authors' code does)

and the step's loss is the usual token-mean loss of the mixed batch + λ · L_TM.

Differences from the authors' code, and why:
- `layers` defaults to the last hidden state, as in the authors' code; `layers: null`
  constrains every decoder layer's output, which is far stricter: on the random-init tiny
  preset it stops new tasks being learnt.
- General and task samples share one global batch and its token-mean loss (as `replay`
  does); the authors average the two cross-entropies. One normalisation keeps the loop's
  DDP/accumulation arithmetic untouched.
- λ is fixed, default 1 (the authors' weight is 100 on a pretrained LLM; on the tiny preset
  λ = 100 keeps task-0 accuracy at 0.25 against 0.81 for λ = 1); their dynamic weight
  CE/L_TM would depend on each rank's shard, and every rank must compute the same term.
- Only the recorded states (int8) are kept, not h⁰ itself: the loss needs nothing else.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from palimpsest.train.batching import TokenizedQA, collate_qa
from palimpsest.train.hooks import LoopContext, StepBatch, TrainingMethod
from palimpsest.train.methods import BELOW_ZERO3, MethodInfo, Param
from palimpsest.train.sampling import rng_for

METHOD = MethodInfo(
    name="gere", family="continual", implementation="GeRe",
    summary="general-sample replay + threshold-margin loss keeping hidden activations on their side of thresholds "
            "recorded from the initial model", paper="Zhang et al., 2025 (GeRe)",
    packing_reason="it reads each example's hidden states from the model's outputs",
    params=(
        Param("replay_ratio", "float", 0.5, "share of every batch drawn from the general samples", low=0, high=1,
              low_open=True, high_open=True),
        Param("lam", "float", 1.0, "weight λ of the TM loss (the authors use 100 on pretrained LLMs)", low=0),
        Param("margin", "float", 0.0, "hinge margin m of the TM loss", low=0),
        Param("std_scale", "float", 1.0, "k in τ± = μ ± k·σ", low=0, low_open=True),
        Param("num_general", "int", 64, "general samples kept (the first of the run's replay pool)", low=1),
        Param("layers", "int_list", [-1], "hidden_states indices to constrain (null: every decoder layer)",
              nullable=True),
    ),
    backends=BELOW_ZERO3,
    backend_reason="it reads hidden states through the unwrapped model, whose weights ZeRO-3 partitions",
    needs_general=True,
    private_reason="its batches mix in general samples outside the Poisson sampler",
)

GENERAL_PART = "general"


def activation_thresholds(activations: torch.Tensor, std_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron thresholds τ± = μ ± k·σ over the token axis.

    Args:
        activations: (N tokens, L layers, H) hidden states of the initial model.
        std_scale: k, the width of the neutral band in standard deviations.

    Returns:
        (τ⁺, τ⁻), each (L, H).
    """
    mean = activations.mean(0)
    std = activations.var(0, unbiased=False).sqrt()  # population std, as the authors compute it
    return mean + std_scale * std, mean - std_scale * std


def activation_states(activations: torch.Tensor, pos_threshold: torch.Tensor,
                      neg_threshold: torch.Tensor) -> torch.Tensor:
    """+1 where an activation is ≥ τ⁺, −1 where ≤ τ⁻, 0 in between (int8, same shape)."""
    states = torch.zeros(activations.shape, dtype=torch.int8)
    states[activations >= pos_threshold] = 1
    states[activations <= neg_threshold] = -1
    return states


def threshold_margin_loss(hidden: torch.Tensor, states: torch.Tensor, pos_threshold: torch.Tensor,
                          neg_threshold: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    """L_TM: hinge penalties for leaving the recorded activation state, averaged over violations.

    Args:
        hidden: (B, T, L, H) current hidden states.
        states: (B, T, L, H) recorded states in {−1, 0, +1}.
        pos_threshold: τ⁺, broadcastable to `hidden` (e.g. (L, H)).
        neg_threshold: τ⁻, same shape as `pos_threshold`.
        mask: (B, T) bool, True at real (non-padding) tokens.
        margin: m ≥ 0, how far inside its region an activation must stay to cost nothing.

    Returns:
        A scalar; exactly zero when no entry violates its region.
    """
    relu = torch.relu
    above = relu(pos_threshold + margin - hidden)                # state +1 must stay ≥ τ⁺ + m
    below = relu(hidden - neg_threshold + margin)                # state −1 must stay ≤ τ⁻ − m
    inside = relu(hidden - pos_threshold + margin) + relu(neg_threshold + margin - hidden)
    loss = torch.where(states == 1, above, torch.where(states == -1, below, inside))
    loss = loss * mask[:, :, None, None]
    return loss.sum() / (loss != 0).sum().clamp(min=1)


class GeRe(TrainingMethod):
    """Replay a fixed general set in every batch and keep its activation states (TM loss).

    Args:
        replay_ratio: fraction of every global batch drawn from the general set (0 < r < 1).
        lam: weight λ of the TM loss (≥ 0; the authors use 100 on pretrained LLMs).
        margin: hinge margin m of the TM loss (≥ 0; 0 in the authors' code).
        std_scale: k in τ± = μ ± k·σ (> 0; 1 in the authors' code).
        num_general: how many general samples to keep (the first ones of the run's list).
        layers: indices into the model's `hidden_states` (0 = embeddings, −1 = last);
            default: the last one (as the authors); None constrains every decoder layer's output.
    """

    def __init__(self, replay_ratio: float, lam: float, margin: float, std_scale: float, num_general: int,
                 layers: list[int] | None):
        self.replay_ratio, self.lam, self.margin, self.std_scale = replay_ratio, lam, margin, std_scale
        self.num_general, self.layers = num_general, None if layers is None else list(layers)
        # Recorded once from the initial model (checkpointed): τ± (L, H) and states (N, T_max, L, H).
        self.pos_threshold: torch.Tensor | None = None
        self.neg_threshold: torch.Tensor | None = None
        self.states: torch.Tensor | None = None
        self.layer_indices: list[int] = []
        self.replayed: np.ndarray = np.zeros(0, dtype=np.int64)  # general indices of the current step's batch

    def general_count(self, batch_size: int) -> int:
        return int(round(self.replay_ratio * batch_size))

    def before_task(self, ctx: LoopContext) -> None:
        n_general = self.general_count(ctx.batch_size)
        if not 1 <= n_general < ctx.batch_size:
            raise ValueError(f"gere: replay_ratio {self.replay_ratio} gives {n_general} general samples in a "
                             f"batch of {ctx.batch_size}; need at least 1 and fewer than the batch")
        if self.states is None:  # first task of a fresh run: the model is still the initial one
            if not ctx.general:
                raise ValueError("gere: the run has no general samples to replay (stream general replay pool is empty)")
            self.record(ctx)
        self.pos_threshold = self.pos_threshold.to(ctx.device)
        self.neg_threshold = self.neg_threshold.to(ctx.device)

    @torch.no_grad()
    def record(self, ctx: LoopContext) -> None:
        """Thresholds and activation states of the current (initial) model on the kept general samples."""
        items = ctx.general[: self.num_general]
        model = ctx.model
        was_training = model.training
        model.eval()
        per_sample = []
        for start in range(0, len(items), ctx.batch_size):
            chunk = items[start : start + ctx.batch_size]
            hidden, _ = self.hidden_states(model, chunk, ctx)
            per_sample += [hidden[row, : len(it.prompt) + len(it.answer) + 1].float().cpu()
                           for row, it in enumerate(chunk)]
        model.train(was_training)
        self.pos_threshold, self.neg_threshold = activation_thresholds(torch.cat(per_sample), self.std_scale)
        self.states = torch.zeros((len(items), max(len(h) for h in per_sample), *per_sample[0].shape[1:]),
                                  dtype=torch.int8)
        for row, hidden in enumerate(per_sample):
            self.states[row, : len(hidden)] = activation_states(hidden, self.pos_threshold, self.neg_threshold)
        if ctx.world_size > 1 and dist.is_initialized():
            # Ranks can differ in the last bit of a forward pass; rank 0's record is the one all use.
            for name in ("pos_threshold", "neg_threshold", "states"):
                tensor = getattr(self, name).to(ctx.device)
                dist.broadcast(tensor, src=0)
                setattr(self, name, tensor.cpu())

    def hidden_states(self, model, items: list[TokenizedQA], ctx: LoopContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, L, H) hidden states of the constrained layers and the (B, T) real-token mask."""
        batch = collate_qa(items, pad_id=ctx.pad_id, eos_id=ctx.eos_id)
        input_ids, attention = batch["input_ids"].to(ctx.device), batch["attention_mask"].to(ctx.device)
        outputs = model(input_ids=input_ids, attention_mask=attention, output_hidden_states=True)
        if not self.layer_indices:
            count = len(outputs.hidden_states)
            wanted = range(1, count) if self.layers is None else self.layers
            if any(not -count <= i < count for i in wanted):
                raise ValueError(f"gere: layers {self.layers} out of range for {count} hidden states")
            self.layer_indices = [i % count for i in wanted]
        hidden = torch.stack([outputs.hidden_states[i] for i in self.layer_indices], dim=2)
        return hidden.float(), attention.bool()

    def batch(self, ctx: LoopContext, step: int) -> StepBatch:
        n_general = self.general_count(ctx.batch_size)
        kept = len(self.states)
        rng = rng_for(ctx.seed, "gere-draw", ctx.task, step)
        self.replayed = rng.choice(kept, size=n_general, replace=kept < n_general)
        return StepBatch({"task": ctx.task_batch(step, ctx.batch_size - n_general),
                          GENERAL_PART: [ctx.general[i] for i in self.replayed]})

    def loss(self, ctx: LoopContext, model, micro, outputs):
        if not len(self.replayed):
            return micro.nll()
        # The TM batch is every general sample of the global batch, so each rank (and each
        # micro-batch) computes the same full term. The unwrapped module shares the parameters,
        # so these gradients still reach DDP's reducer, without re-arming it by a second
        # forward through the wrapper before one backward.
        hidden, mask = self.hidden_states(ctx.model, [ctx.general[i] for i in self.replayed], ctx)
        states = self.states[torch.from_numpy(self.replayed), : hidden.shape[1]].to(hidden.device)
        term = threshold_margin_loss(hidden, states, self.pos_threshold, self.neg_threshold, mask, self.margin)
        return micro.nll() + micro.once_per_step(self.lam * term)

    def state_dict(self) -> dict:
        return {"pos_threshold": None if self.pos_threshold is None else self.pos_threshold.cpu(),
                "neg_threshold": None if self.neg_threshold is None else self.neg_threshold.cpu(),
                "states": self.states, "layer_indices": list(self.layer_indices)}

    def load_state_dict(self, state: dict) -> None:
        self.pos_threshold, self.neg_threshold = state["pos_threshold"], state["neg_threshold"]
        self.states, self.layer_indices = state["states"], list(state["layer_indices"])
