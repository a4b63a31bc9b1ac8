"""`gs_lora`: GS-LoRA — a LoRA adapter per request, group-sparse, with a bounded forget loss.

Zhao et al., "Continual Forgetting for Pre-trained Vision Models", CVPR 2024 (the
authors' `engine_cl.py`). Each request trains a new LoRA adapter on the FFN linears of
every block (earlier requests' adapters stay active and frozen; base weights never
change, so each request's change is its own adapter, inspectable and never undone by a
later one). The loss is
    L = NLL(retain) + β·ReLU(BND − NLL(forget)) + α·Σ_g ‖θ_g‖₂,
with one group g per decoder block holding every LoRA A and B of that block's FFN
(group lasso: whole blocks' adapters go to zero, so a request touches few blocks).
β = 0.15, α = 1e-4 and rank 8 are the authors' settings. Their BND (105) bounds a
face-recognition loss; for a language model the default is ln(vocabulary size), the
NLL of a uniform guess (`bound` sets it). `prox: true` adds a proximal group
soft-threshold after each step (w_g ← max(0, 1 − lr·α/‖w_g‖)·w_g), which makes groups
exactly zero rather than small (not in the paper).
"""

from __future__ import annotations

import math
import warnings

import torch

from palimpsest.continual.lora import lora_config
from palimpsest.train.methods import LORA_RANK, MethodInfo, Param
from palimpsest.unlearn.base import FORGET, RETAIN, UnlearningMethod
from palimpsest.unlearn.rmu import decoder_layers

METHOD = MethodInfo(
    name="gs_lora", family="unlearning", implementation="GSLoRA",
    summary="a LoRA adapter per request on the FFNs; NLL(retain) + β·ReLU(BND − NLL(forget)) + α·Σ‖group‖₂",
    paper="Zhao et al., 2024",
    params=(
        LORA_RANK,
        Param("lora_alpha", "float", 16.0, "LoRA scaling numerator (update = lora_alpha / r · BA)", low=0,
              low_open=True),
        Param("target_modules", "str_list", ["gate_proj", "up_proj", "down_proj"], "FFN linears with adapters"),
        Param("beta", "float", 0.15, "β, the weight of the bounded forget loss", low=0, low_open=True),
        Param("bound", "float", None, "BND; null: ln(vocabulary size)", low=0, low_open=True, nullable=True),
        Param("group_weight", "float", 1e-4, "α, the weight of the group-sparse penalty", low=0),
        Param("prox", "bool", False, "proximal group soft-threshold after each step (exact zeros)"),
    ),
    backends=("ddp",),
    backend_reason="peft adapters and the group-sparse penalty run on DDP only (as model.lora does)",
)


def group_norm(group: list[torch.Tensor]) -> torch.Tensor:
    """‖θ_g‖₂ over every tensor of one group."""
    return torch.linalg.vector_norm(torch.cat([p.reshape(-1) for p in group]))


def adapter_name(task: int) -> str:
    return f"request{task}"


class GSLoRA(UnlearningMethod):
    retain_weight = 1.0

    def __init__(self, r: int, lora_alpha: float, target_modules: list[str], beta: float, bound: float | None,
                 group_weight: float, prox: bool):
        self.r, self.lora_alpha, self.target_modules = r, lora_alpha, list(target_modules)
        self.beta, self.bound, self.group_weight, self.prox = beta, bound, group_weight, prox

    def _config(self):
        return lora_config(r=self.r, alpha=self.lora_alpha, dropout=0.0, target_modules=self.target_modules)

    def _add(self, ctx, task: int) -> None:
        from peft import get_peft_model

        if hasattr(ctx.model, "peft_config"):
            ctx.model.add_adapter(adapter_name(task), self._config())
            return
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for users to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            ctx.model = get_peft_model(ctx.model, self._config(), adapter_name=adapter_name(task))

    def prepare_model(self, ctx) -> None:
        for task in range(ctx.task):  # the finished requests' adapters, as saved
            self._add(ctx, task)

    def before_task(self, ctx) -> None:
        self._add(ctx, ctx.task)
        names = [adapter_name(t) for t in range(ctx.task + 1)]
        ctx.model.base_model.set_adapter(names)  # all active: earlier requests stay forgotten
        for name, param in ctx.model.named_parameters():  # only this request's adapter trains
            param.requires_grad_(f".{adapter_name(ctx.task)}." in name)

    def groups(self, model, task: int) -> list[list[torch.Tensor]]:
        """Per decoder block, the LoRA tensors of request `task`'s adapter in it."""
        key = f".{adapter_name(task)}."
        found = []
        for block in decoder_layers(model):
            tensors = [p for n, p in block.named_parameters() if key in n and ("lora_A" in n or "lora_B" in n)]
            if tensors:
                found.append(tensors)
        return found

    def _bound(self, ctx) -> float:
        if self.bound is not None:
            return self.bound
        return math.log(ctx.model.get_input_embeddings().num_embeddings)

    def forget_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        """β·ReLU(BND − mean forget NLL) on this micro-batch's forget rows, weighted by their share of tokens.

        With one worker and no accumulation this is the paper's term on the batch mean; with
        more, the ReLU applies to each micro-batch's mean (equal whenever all are on the same
        side of the bound).
        """
        rows = micro.rows(FORGET)
        tokens = micro.token_mask[rows].sum()
        if tokens == 0:
            return micro.token_losses[rows].sum() * 0.0
        local_mean = micro.token_losses[rows].sum() / tokens
        weight = tokens * micro.world_size / micro.step_batch.answer_tokens(FORGET)
        return self.beta * torch.relu(self._bound(ctx) - local_mean) * weight

    def group_penalty(self, model, task: int) -> torch.Tensor:
        """Σ_g ‖θ_g‖₂ over request `task`'s groups (torch's norm has gradient 0 at a zeroed group, not NaN)."""
        return sum(group_norm(group) for group in self.groups(model, task))

    def retain_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        # The penalty is the same on every rank: DDP's average keeps it once; once_per_step undoes accumulation.
        return micro.nll(RETAIN) + micro.once_per_step(self.group_weight * self.group_penalty(ctx.model, ctx.task))

    def after_step(self, ctx, step, batch) -> None:
        if not self.prox or self.group_weight == 0:
            return
        with torch.no_grad():
            for group in self.groups(ctx.model, ctx.task):
                norm = group_norm(group)
                shrink = torch.clamp(1 - ctx.lr * self.group_weight / norm.clamp(min=1e-12), min=0.0)
                for p in group:
                    p.mul_(shrink)
