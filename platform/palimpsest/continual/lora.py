"""`lora`: a fresh LoRA adapter per task, merged into the base weights at the task's end.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021, eq. (3):
h = W₀x + ΔWx = W₀x + (α/r)·BAx, with W₀ frozen, A ~ Kaiming-uniform and B = 0 so that
ΔW = 0 when a task starts. Per task t the method wraps the model with a new adapter
(peft), trains only A and B, and at the task's end merges W₀ ← W₀ + (α/r)·BA
(`merge_and_unload`), so task t + 1 starts from the merged weights with a new zero ΔW.
Between tasks the model is the plain transformers model again, so task-end checkpoints
are ordinary `save_pretrained` folders; mid-task checkpoints are the peft model's
state_dict, which `before_task` rebuilds (same seed, same adapter) before it is loaded.
"""

from __future__ import annotations

import torch

from palimpsest.continual import register
from palimpsest.continual.base import ContinualMethod, LoopState


def lora_config(*, r: int, alpha: float, dropout: float, target_modules: list[str]):
    """The peft config of one task's adapter (causal LM, adapters on `target_modules` only)."""
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=list(target_modules))


@register("lora")
class LoRA(ContinualMethod):
    """Sequential LoRA: one adapter per task, merged into the base model when the task ends.

    Args:
        r: adapter rank.
        alpha: scaling numerator; the update is (alpha / r)·BA.
        dropout: dropout on the adapter input. Keep 0 if you need bit-identical resumes:
            the shared loop does not checkpoint the torch RNG that dropout draws from.
        target_modules: module names (peft matching) that get an adapter.
    """

    def __init__(self, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 target_modules: tuple[str, ...] | list[str] = ("q_proj", "v_proj")):
        problems = []
        if r < 1:
            problems.append("r ≥ 1")
        if alpha <= 0:
            problems.append("alpha > 0")
        if not 0 <= dropout < 1:
            problems.append("0 ≤ dropout < 1")
        if not target_modules:
            problems.append("at least one target module")
        if problems:
            raise ValueError("lora: needs " + ", ".join(problems))
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.target_modules = list(target_modules)
        self._requires_grad: dict[str, bool] = {}

    def before_task(self, state: LoopState) -> None:
        from peft import get_peft_model

        if hasattr(state.model, "peft_config"):
            raise ValueError("lora: the model already carries peft adapters; drop `model.lora` from the spec "
                             "(the method adds its own adapter per task)")
        # peft freezes every base parameter; remember the flags so the merged model is handed back as it came.
        self._requires_grad = {n: p.requires_grad for n, p in state.model.named_parameters()}
        # B = 0 at init (peft's default), so the wrapped model computes exactly the merged base model.
        state.model = get_peft_model(state.model, lora_config(r=self.r, alpha=self.alpha, dropout=self.dropout,
                                                              target_modules=self.target_modules))

    def after_task(self, state: LoopState) -> None:
        if not hasattr(state.model, "merge_and_unload"):
            return
        merged = state.model.merge_and_unload()
        for name, param in merged.named_parameters():
            param.requires_grad_(self._requires_grad.get(name, True))
        state.model = merged

    # Nothing to checkpoint: the adapter lives in the model's state_dict, and its structure
    # is a pure function of the constructor arguments.


def adapter_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the LoRA adapter tensors (lora_A / lora_B) in a peft model."""
    return [n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]
