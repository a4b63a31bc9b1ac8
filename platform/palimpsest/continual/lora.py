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

from palimpsest.train.hooks import LoopContext, TrainingMethod
from palimpsest.train.methods import BELOW_ZERO3, LORA_RANK, MethodInfo, Param

METHOD = MethodInfo(
    name="lora", family="continual", implementation="LoRA",
    summary="a fresh LoRA adapter per task (peft), merged at the task's end; base weights frozen during a task",
    paper="Hu et al., 2021",
    params=(
        LORA_RANK,
        Param("alpha", "float", 16.0, "scaling numerator: the update is (alpha / r)·BA", low=0, low_open=True),
        Param("dropout", "float", 0.0, "dropout on the adapter input", low=0, high=1, high_open=True),
        Param("target_modules", "str_list", ["q_proj", "v_proj"], "module names (peft matching) with an adapter"),
    ),
    backends=BELOW_ZERO3,
    backend_reason="its adapters wrap whole weights, which ZeRO-3 partitions",
    private=True,
)


def lora_config(*, r: int, alpha: float, dropout: float, target_modules: list[str]):
    """The peft config of one task's adapter (causal LM, adapters on `target_modules` only)."""
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=list(target_modules))


class LoRA(TrainingMethod):
    """Sequential LoRA: one adapter per task, merged into the base model when the task ends.

    Args:
        r: adapter rank.
        alpha: scaling numerator; the update is (alpha / r)·BA.
        dropout: dropout on the adapter input. Keep 0 if you need bit-identical resumes:
            the shared loop does not checkpoint the torch RNG that dropout draws from.
        target_modules: module names (peft matching) that get an adapter.
    """

    def __init__(self, r: int, alpha: float, dropout: float, target_modules: list[str]):
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.target_modules = list(target_modules)
        self._requires_grad: dict[str, bool] = {}

    def before_task(self, ctx: LoopContext) -> None:
        from peft import get_peft_model

        if hasattr(ctx.model, "peft_config"):
            raise ValueError("lora: the model already carries peft adapters; drop `model.lora` from the spec "
                             "(the method adds its own adapter per task)")
        # peft freezes every base parameter; remember the flags so the merged model is handed back as it came.
        self._requires_grad = {n: p.requires_grad for n, p in ctx.model.named_parameters()}
        # B = 0 at init (peft's default), so the wrapped model computes exactly the merged base model.
        ctx.model = get_peft_model(ctx.model, lora_config(r=self.r, alpha=self.alpha, dropout=self.dropout,
                                                              target_modules=self.target_modules))

    def after_task(self, ctx: LoopContext) -> None:
        if not hasattr(ctx.model, "merge_and_unload"):
            return
        merged = ctx.model.merge_and_unload()
        for name, param in merged.named_parameters():
            param.requires_grad_(self._requires_grad.get(name, True))
        ctx.model = merged

    # Nothing to checkpoint: the adapter lives in the model's state_dict, and its structure
    # is a pure function of the constructor arguments.


def adapter_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the LoRA adapter tensors (lora_A / lora_B) in a peft model."""
    return [n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]
