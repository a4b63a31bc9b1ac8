"""Training FLOPs counted per model call: every forward and backward a method runs, on every model it runs.

Kaplan et al. (2020)'s estimate per call of a model with N parameters on T tokens:
2·N·T for the forward pass and, when the call builds a graph (gradients on, some
parameter trainable), 2·N·T for the gradient with respect to the activations plus
2·N_trainable·T for the gradient with respect to the trainable weights. A plain training
step is then the familiar 6·N·T; a frozen reference model (NPO) or frozen copy (RMU)
costs 2·N·T; LoRA's backward 2·N·T + 2·N_lora·T; GU's per-sample retain gradients a
forward and backward each. T counts every position the model computes (padding
included: it is computed). A call is counted where the model runs: `FlopMeter.watch`
hooks a model (copies made with `copy.deepcopy` keep the hook), and the meter counts only
while `counting()` is open (the loop opens it around each training step, never around
evaluation).
"""

from __future__ import annotations

import contextlib

import torch

_FLAG = "_palimpsest_flop_meter"


def train_flops(parameters: float, tokens: float, *, trainable: float | None = None, backward: bool = True) -> float:
    """Kaplan et al. (2020): 2·N·T forward; with a backward pass 2·N·T more for the activations' gradient and
    2·N_trainable·T for the weights' (N_trainable = N unless given): 6·N·T for a plain training step."""
    flops = 2.0 * parameters * tokens
    if backward:
        flops += 2.0 * parameters * tokens + 2.0 * (parameters if trainable is None else trainable) * tokens
    return flops


class FlopMeter:
    """Sums the FLOPs of the model calls made while `counting()` is open (this process only)."""

    def __init__(self):
        self.flops = 0.0
        self.calls = 0
        self._on = False

    @contextlib.contextmanager
    def counting(self):
        self._on = True
        try:
            yield self
        finally:
            self._on = False

    def watch(self, model: torch.nn.Module) -> None:
        """Count every call of `model`'s causal LM (inside DDP, DeepSpeed, Opacus or peft wrappers); idempotent."""
        lm = causal_lm(model)
        if getattr(lm, _FLAG, None) == id(self):  # an id, not the meter: a deepcopy of the model must not copy it
            return
        meter = self

        def hook(module, args, kwargs):  # a plain function: a deepcopy of the model shares it (and this meter)
            if meter._on:
                meter.record(module, args, kwargs)

        lm.register_forward_pre_hook(hook, with_kwargs=True)
        setattr(lm, _FLAG, id(self))

    def record(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"][..., 0]
        tokens = ids.numel()
        total = trainable = 0
        for p in module.parameters():
            total += p.numel()
            if p.requires_grad:
                trainable += p.numel()
        self.flops += train_flops(total, tokens, trainable=trainable, backward=torch.is_grad_enabled() and trainable > 0)
        self.calls += 1


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The outermost transformers causal LM inside `model` (the module whose call is one forward pass)."""
    from transformers import GenerationMixin, PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and isinstance(module, GenerationMixin):
            return module
    raise ValueError(f"no transformers causal LM inside {type(model).__name__}")
