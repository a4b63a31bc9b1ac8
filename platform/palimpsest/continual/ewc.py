"""`ewc`: Elastic Weight Consolidation with a diagonal Fisher.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017,
eq. (3): L(θ) = L_t(θ) + Σ_i (λ/2) F_i (θ_i − θ*_i)². After each task the diagonal
(empirical) Fisher F = E[(∂ log p(answer | question) / ∂θ)²] is estimated from
per-example gradients on up to `fisher_samples` of the task's examples; Fishers of
successive tasks add up and θ* moves to the latest weights (the online form of Schwarz et
al., "Progress & Compress", 2018, with γ = 1), so one penalty covers all earlier tasks.

λ's default (1e5) is large because per-example squared gradients of a trained model are
small; on the quickstart stream λ = 1e4 halves forgetting and λ = 1e5 nearly removes it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from palimpsest.continual import register
from palimpsest.continual.base import ContinualMethod, LoopState
from palimpsest.train.batching import collate_qa, token_losses


def ewc_penalty(model: torch.nn.Module, fisher: dict, anchor: dict, lam: float) -> torch.Tensor:
    """(λ/2) Σ_i F_i (θ_i − θ*_i)² over the parameters that have a Fisher entry."""
    total = None
    for name, param in model.named_parameters():
        if name in fisher:
            term = (fisher[name].to(param.device) * (param - anchor[name].to(param.device)) ** 2).sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * lam * total


def diagonal_fisher(model: torch.nn.Module, items, *, pad_id: int, eos_id: int, device, rank: int = 0,
                    world_size: int = 1) -> dict[str, torch.Tensor]:
    """Mean squared per-example gradient of the answer log-likelihood (ranks split the examples)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    for item in items[rank::world_size]:
        batch = {k: v.to(device) for k, v in collate_qa([item], pad_id=pad_id, eos_id=eos_id).items()}
        model.zero_grad(set_to_none=True)
        losses, _ = token_losses(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        losses.sum().backward()  # −log p(answer | question)
        for n, p in params.items():
            if p.grad is not None:
                sums[n] += p.grad.detach().float() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if world_size > 1 and dist.is_initialized():
        for tensor in sums.values():
            dist.all_reduce(tensor)
    return {n: s / max(len(items), 1) for n, s in sums.items()}


@register("ewc")
class EWC(ContinualMethod):
    def __init__(self, lam: float = 1e5, fisher_samples: int = 64):
        if lam < 0 or fisher_samples < 1:
            raise ValueError("ewc: lam ≥ 0 and fisher_samples ≥ 1")
        self.lam, self.fisher_samples = lam, fisher_samples
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def extra_loss(self, state: LoopState, model, batch, outputs):
        if not self.fisher:
            return None
        return ewc_penalty(state.model, self.fisher, self.anchor, self.lam)

    def after_task(self, state: LoopState) -> None:
        items = state.tasks[state.task][: self.fisher_samples]
        fisher = diagonal_fisher(state.model, items, pad_id=state.pad_id, eos_id=state.eos_id, device=state.device,
                                 rank=state.rank, world_size=state.world_size)
        for name, value in fisher.items():
            self.fisher[name] = self.fisher.get(name, 0) + value.cpu()
        self.anchor = {n: p.detach().cpu().clone() for n, p in state.model.named_parameters() if n in self.fisher}

    def state_dict(self) -> dict:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.fisher, self.anchor = state["fisher"], state["anchor"]
