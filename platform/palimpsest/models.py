"""Model factory: tiny presets from a LlamaConfig (random init) or any from_pretrained path; LoRA via peft.

Workers build the model from a plain dict (`model_config`) so the same init is
reproduced on every rank and after a restart.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from palimpsest.presets import MODEL_PRESETS

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def model_config(model_spec: dict, *, vocab_size: int, pad_id: int, bos_id: int | None, eos_id: int,
                 seed: int) -> dict:
    """Everything a worker needs to build the model, as plain data."""
    return {
        "preset": model_spec.get("preset"),
        "pretrained": model_spec.get("pretrained"),
        "dtype": model_spec.get("dtype", "float32"),
        "attn_implementation": model_spec.get("attn_implementation", "sdpa"),
        "lora": model_spec.get("lora"),
        "vocab_size": vocab_size,
        "pad_id": pad_id,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "seed": seed,
    }


def build_model(cfg: dict, *, random_init: bool = False) -> torch.nn.Module:
    """Build the causal LM described by `cfg` (see `model_config`).

    `random_init`: a pretrained model's architecture with fresh random weights (seeded),
    the reference GEM's forward transfer is measured against. Presets are random-init anyway.
    """
    dtype = _DTYPES[cfg.get("dtype", "float32")]
    attention = {"attn_implementation": cfg.get("attn_implementation") or "sdpa"}
    if cfg.get("pretrained"):  # no "Loading weights" bar per model a worker loads (a run loads many)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if cfg.get("pretrained") and random_init:
        from transformers import AutoConfig

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"])
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg["pretrained"]), dtype=dtype,
                                                     **attention)
        if model.get_input_embeddings().num_embeddings < cfg["vocab_size"]:
            model.resize_token_embeddings(cfg["vocab_size"])
    elif cfg.get("pretrained"):
        model = AutoModelForCausalLM.from_pretrained(cfg["pretrained"], dtype=dtype, **attention)
        if model.get_input_embeddings().num_embeddings < cfg["vocab_size"]:
            model.resize_token_embeddings(cfg["vocab_size"])
    else:
        config = LlamaConfig(
            **MODEL_PRESETS[cfg["preset"]],
            vocab_size=cfg["vocab_size"],
            pad_token_id=cfg["pad_id"],
            bos_token_id=cfg["bos_id"],
            eos_token_id=cfg["eos_id"],
            tie_word_embeddings=False,
            **attention,
        )
        # Same seed on every rank -> identical init without relying on DDP's broadcast.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"])
            model = LlamaForCausalLM(config)
        model.to(dtype)
    model.generation_config.pad_token_id = cfg["pad_id"]
    model.generation_config.eos_token_id = cfg["eos_id"]
    if cfg.get("lora"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"] + 1)  # adapters initialise the same on every rank and restart
            model = add_lora(model, cfg["lora"])
    return model


def add_lora(model: torch.nn.Module, lora: dict) -> torch.nn.Module:
    """Freeze the base model and add LoRA adapters (peft)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
    )
    return get_peft_model(model, config)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's model inside its wrappers: DDP, DeepSpeed, Opacus's GradSampleModule and DPDDP."""
    while True:
        # GradSampleModule keeps the model as `_module` (and forwards unknown attributes to it).
        inner = model._modules.get("_module") or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


def export_pretrained(model: torch.nn.Module, out_dir: str | Path) -> None:
    """Save in transformers' format; LoRA adapters are merged into a copy first."""
    from transformers.utils import logging as hf_logging

    model = unwrap(model)
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    # No "Writing model shards" bar per checkpoint in the run's progress lines.
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def count_parameters(model: torch.nn.Module) -> dict:
    params = list(unwrap(model).parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }
