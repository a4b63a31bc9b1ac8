"""The speed options of `training` a backend applies: mixed precision, activation checkpointing, compile.

What they change is how a step is computed, never what it computes: each option's losses and
gradients match fp32 eager attention without it (tests/test_speed.py, on CPU). The rules
that refuse a combination (DP-SGD, DeepSpeed, flash-attention) are in `spec/rules.py`.
"""

from __future__ import annotations

import contextlib

import torch

from palimpsest.models import unwrap

# torch.compile recompiles a graph for each new guard failure (a new sequence length before
# it marks the length dynamic, a new method's model); past this many it runs eagerly.
COMPILE_RECOMPILE_LIMIT = 8

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device, *, private: bool = False) -> str:
    """`auto`: bf16 on a GPU that has it (not under DP-SGD: Opacus clips in fp32), fp32 elsewhere."""
    if precision != "auto":
        return precision
    if private or device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp32"


def autocast(precision: str, device: torch.device):
    """The forward's context: autocast to bf16 / fp16 (weights stay fp32), nothing at fp32."""
    if precision not in _DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def prepare_model(model: torch.nn.Module, *, activation_checkpointing: bool, compile: bool) -> torch.nn.Module:
    """Turn on activation checkpointing and compile the model in place (once: a later task keeps them)."""
    inner = unwrap(model)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft's LoRA: the transformer
    # transformers 5 names it activation checkpointing (the gradient_ names warn, to go in v6).
    enabled = getattr(base, "is_activation_checkpointing", None)
    if activation_checkpointing and not (enabled if enabled is not None else base.is_gradient_checkpointing):
        # Non-reentrant: gradients reach inputs that do not require grad (frozen embeddings under LoRA).
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compile and getattr(inner, "_compiled_call_impl", None) is None:
        import torch._dynamo

        config = torch._dynamo.config
        if hasattr(config, "recompile_limit"):
            config.recompile_limit = COMPILE_RECOMPILE_LIMIT
        else:  # torch before 2.6
            config.cache_size_limit = COMPILE_RECOMPILE_LIMIT
        inner.compile()  # nn.Module.compile: the same module (state dict keys, wrappers) with a compiled call
    return model
