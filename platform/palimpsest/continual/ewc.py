"""`ewc`: Elastic Weight Consolidation with a diagonal Fisher.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017,
eq. (3): L(θ) = L_t(θ) + Σ_i (λ/2) F_i (θ_i − θ*_i)². After each task the diagonal
Fisher F = E[(∂ log p(answer | question) / ∂θ)²] is estimated from per-example gradients
on a seeded random sample of `fisher_samples` of the task's examples.

`mode: separate` (default, the paper's form for more than two tasks): one penalty per
finished task, each with its own Fisher F_t and anchor θ*_t.
`mode: online` (Schwarz et al., "Progress & Compress", 2018, online EWC): one penalty
with F ← γ·F + F_t and the anchor moved to the latest task's weights; γ = 1 sums the
Fishers.

Departure: the Fisher is the empirical one (gradients of the true answers' likelihood),
as in most LLM continual-learning code; the paper's Fisher takes expectations under the
model's own predictions.

λ's default (1e5) is large because per-example squared gradients of a trained model are
small; on the quickstart stream λ = 1e4 halves forgetting and λ = 1e5 nearly removes it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from palimpsest.train.batching import collate_qa, token_losses
from palimpsest.train.hooks import LoopContext, TrainingMethod
from palimpsest.train.methods import MethodInfo, Param
from palimpsest.train.sampling import rng_for

METHOD = MethodInfo(
    name="ewc", family="continual", implementation="EWC",
    summary="½λΣF(θ−θ*)² with a diagonal Fisher from a random sample of each task",
    paper="Kirkpatrick et al., 2017; online form: Schwarz et al., 2018",
    params=(
        Param("lam", "float", 1e5, "penalty weight λ", low=0),
        Param("fisher_samples", "int", 64, "examples per task (a seeded random sample) for the Fisher", low=1),
        Param("mode", "str", "separate", "separate: one penalty per task (Kirkpatrick); online: decayed sum "
              "(Schwarz)", choices=("separate", "online")),
        Param("gamma", "float", 1.0, "online mode: decay γ of the earlier Fisher", low=0, high=1),
    ),
    # Its Fisher comes from backward passes outside the training step; from ZeRO-2 on, ZeRO's
    # gradient hooks take those gradients (and issue collectives), and ZeRO-3 partitions the weights.
    backends=("ddp", "zero0", "zero1"),
    backend_reason="it runs its own backward passes for the Fisher, which ZeRO-2/3 gradient hooks intercept",
    private_reason="its Fisher information reads the training data through unclipped gradients",
)


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


def fisher_sample(num_examples: int, count: int, *, seed: int, task: int) -> list[int]:
    """A seeded random sample (without replacement) of `count` example indices of a task."""
    rng = rng_for(seed, "ewc-fisher", task)
    return sorted(rng.choice(num_examples, size=min(count, num_examples), replace=False).tolist())


class EWC(TrainingMethod):
    def __init__(self, lam: float, fisher_samples: int, mode: str, gamma: float):
        self.lam, self.fisher_samples, self.mode, self.gamma = lam, fisher_samples, mode, gamma
        # One (Fisher, anchor) per finished task (separate), or a single running pair (online).
        self.penalties: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def loss(self, ctx: LoopContext, model, micro, outputs):
        loss = micro.nll()
        for fisher, anchor in self.penalties:
            loss = loss + micro.once_per_step(ewc_penalty(ctx.model, fisher, anchor, self.lam))
        return loss

    def after_task(self, ctx: LoopContext) -> None:
        task_items = ctx.tasks[ctx.task]
        chosen = fisher_sample(len(task_items), self.fisher_samples, seed=ctx.seed, task=ctx.task)
        fisher = {n: f.cpu() for n, f in diagonal_fisher(ctx.model, [task_items[i] for i in chosen], pad_id=ctx.pad_id,
                                                          eos_id=ctx.eos_id, device=ctx.device, rank=ctx.rank,
                                                          world_size=ctx.world_size).items()}
        anchor = {n: p.detach().cpu().clone() for n, p in ctx.model.named_parameters() if n in fisher}
        if self.mode == "online" and self.penalties:
            (previous, _), = self.penalties
            fisher = {n: self.gamma * previous[n] + f if n in previous else f for n, f in fisher.items()}
            self.penalties = [(fisher, anchor)]
        else:
            self.penalties.append((fisher, anchor))

    def state_dict(self) -> dict:
        return {"penalties": self.penalties}

    def load_state_dict(self, state: dict) -> None:
        self.penalties = [tuple(p) for p in state["penalties"]]
