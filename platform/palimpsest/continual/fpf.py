"""`fpf`: k-FPF — plain training plus k phases of finetuning the forgetting-prone modules on a buffer.

Zhao, Zhou, Long, Jiang & Zhang, "Does Continual Learning Equally Forget All
Parameters?", ICML 2023. Forgetting concentrates in a few task-specific modules; FPF
finetunes only those on a small replay buffer, and k-FPF runs SGD on the stream with no
every-step replay plus FPF phases triggered periodically, regardless of task boundaries:
k phases over the whole stream. This file implements k-FPF-CE (the cross-entropy FPF
objective; k-FPF-KD is not implemented):

* buffer: a reservoir (Algorithm R) updated as the stream is seen — every step's
  examples are streamed through it right after the step — so phases happen from task 0 on;
* phases: after stream steps round(j·N/k), j = 1..k, with N = tasks × steps per task
  (the last phase follows the stream's last step); each is `fpf_steps` plain SGD steps
  with learning rate `lr` on random buffer batches, updating only the FPF modules;
* FPF modules (documented departure: the paper picks module types from its analysis,
  e.g. normalisation layers and the last layers): ranked at each phase by a sensitivity
  score on the buffer — the mean over a module's parameters of the per-example squared
  gradient of the answer loss (diagonal empirical Fisher,
  s_m = (1/|θ_m|) Σ_{i∈m} E[(∂ℓ/∂θ_i)²]) — and the top `fraction` are finetuned.

The FPF batch is a pure function of (seed, stream step), every rank computes its shard's
gradient on the unwrapped model and the gradients are summed with `all_reduce`, so all
ranks apply the same update and a resumed run replays it exactly.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from palimpsest.continual.ewc import diagonal_fisher
from palimpsest.train.batching import collate_qa, token_losses
from palimpsest.train.hooks import LoopContext, StepBatch, TrainingMethod
from palimpsest.train.methods import MethodInfo, Param
from palimpsest.train.sampling import reservoir_update, rng_for

METHOD = MethodInfo(
    name="fpf", family="continual", implementation="KFPF",
    summary="k-FPF: k phases over the stream of a few SGD steps on a reservoir buffer, updating only the most "
            "forgetting-prone modules", paper="Zhao et al., 2023",
    params=(
        Param("k", "int", 10, "FPF phases over the whole stream, evenly spaced", low=1),
        Param("buffer_size", "int", 64, "examples the reservoir holds", low=1),
        Param("fpf_steps", "int", 5, "SGD steps per phase", low=0),
        Param("lr", "float", 0.05, "SGD learning rate of the FPF steps", low=0, low_open=True),
        Param("fraction", "float", 0.1, "share of modules finetuned", low=0, high=1, low_open=True),
        Param("batch_size", "int", None, "buffer examples per FPF step (default: the training batch size)", low=1,
              nullable=True),
        Param("sensitivity_samples", "int", 32, "buffer examples that score module sensitivity", low=1),
    ),
    backends=("ddp",),
    backend_reason="it updates weights outside the optimizer",
    private_reason="its buffer keeps raw training examples and its phase trains on them without DP-SGD",
)


def phase_steps(total_steps: int, k: int) -> list[int]:
    """Stream steps after which the k FPF phases run: round(j·N/k), j = 1..k (distinct, ≥ 1)."""
    return sorted({max(1, round(j * total_steps / k)) for j in range(1, k + 1)})


def module_of(param_name: str) -> str:
    """The module a parameter belongs to ("model.norm.weight" -> "model.norm")."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def module_sensitivity(squared_grads: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per module, the mean over its parameters of the (per-example mean) squared gradient."""
    totals: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for name, value in squared_grads.items():
        module = module_of(name)
        totals[module] = totals.get(module, 0.0) + float(value.double().sum())
        sizes[module] = sizes.get(module, 0) + value.numel()
    return {m: totals[m] / sizes[m] for m in totals}


def select_top_fraction(scores: dict[str, float], fraction: float) -> list[str]:
    """The round(fraction · n) (at least one) highest-scoring names; ties go to the earlier name."""
    count = min(len(scores), max(1, round(fraction * len(scores))))
    return sorted(scores, key=lambda m: (-scores[m], m))[:count]


class KFPF(TrainingMethod):
    """k-FPF-CE: SGD on the stream, k FPF phases of the most sensitive modules on a reservoir buffer."""

    def __init__(self, k: int, buffer_size: int, fpf_steps: int, lr: float, fraction: float,
                 batch_size: int | None, sensitivity_samples: int):
        self.k, self.buffer_size, self.fpf_steps, self.lr = k, buffer_size, fpf_steps, lr
        self.fraction, self.batch_size, self.sensitivity_samples = fraction, batch_size, sensitivity_samples
        self.buffer: list[tuple[int, int]] = []  # (task, index) references: small to checkpoint
        self.seen = 0
        self.fpf_modules: list[str] = []  # chosen at the latest phase
        self.phases_run: list[int] = []  # stream steps after which a phase ran

    def after_step(self, ctx: LoopContext, step: int, batch: StepBatch) -> None:
        arrived = [(ctx.task, i) for i in ctx.task_batch_indices(step - 1)]
        self.seen = reservoir_update(self.buffer, self.seen, arrived, capacity=self.buffer_size,
                                     rng=rng_for(ctx.seed, "fpf-reservoir", ctx.task, step))
        stream_step = ctx.stream_step(step)
        if stream_step in phase_steps(ctx.total_steps, self.k):
            self.fpf_phase(ctx, stream_step)

    def fpf_phase(self, ctx: LoopContext, stream_step: int) -> None:
        """`fpf_steps` SGD steps on buffer batches that move only the FPF modules' parameters."""
        self.phases_run.append(stream_step)
        if self.fpf_steps == 0:
            return
        self.fpf_modules = self.score_modules(ctx)
        chosen = set(self.fpf_modules)
        params = [p for n, p in ctx.model.named_parameters() if module_of(n) in chosen]
        batch_size = self.batch_size or ctx.batch_size
        rng = rng_for(ctx.seed, "fpf-draw", stream_step)
        was_training = ctx.model.training
        ctx.model.train()
        for _ in range(self.fpf_steps):
            picks = rng.choice(len(self.buffer), size=batch_size, replace=len(self.buffer) < batch_size)
            items = [ctx.tasks[t][i] for t, i in (self.buffer[p] for p in picks)]
            grads = self.buffer_gradient(ctx, items, params)
            with torch.no_grad():
                for param, grad in zip(params, grads):
                    param.sub_(self.lr * grad)
        ctx.model.train(was_training)

    def buffer_gradient(self, ctx: LoopContext, items, params) -> list[torch.Tensor]:
        """Gradient of the global token-mean answer loss of `items` w.r.t. `params`, identical on every rank."""
        global_tokens = sum(len(it.answer) + 1 for it in items)
        mine = items[ctx.rank::ctx.world_size]
        if mine:
            batch = {k: v.to(ctx.device) for k, v in collate_qa(mine, pad_id=ctx.pad_id,
                                                                  eos_id=ctx.eos_id).items()}
            logits = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            losses, _ = token_losses(logits, batch["labels"])
            # autograd.grad leaves .grad untouched, so the main optimizer's state is not disturbed.
            grads = list(torch.autograd.grad(losses.sum() / global_tokens, params, allow_unused=True))
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        else:
            grads = [torch.zeros_like(p) for p in params]
        if ctx.world_size > 1 and dist.is_initialized():
            for grad in grads:
                dist.all_reduce(grad)  # shard sums -> the full batch's gradient on every rank
        return grads

    def score_modules(self, ctx: LoopContext) -> list[str]:
        """The FPF modules: highest mean squared per-example gradient on (part of) the buffer."""
        items = [ctx.tasks[t][i] for t, i in self.buffer[: self.sensitivity_samples]]
        squared = diagonal_fisher(ctx.model, items, pad_id=ctx.pad_id, eos_id=ctx.eos_id, device=ctx.device,
                                  rank=ctx.rank, world_size=ctx.world_size)
        return select_top_fraction(module_sensitivity(squared), self.fraction)

    def state_dict(self) -> dict:
        return {"buffer": list(self.buffer), "seen": self.seen, "fpf_modules": list(self.fpf_modules),
                "phases_run": list(self.phases_run)}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = [tuple(x) for x in state["buffer"]]
        self.seen, self.fpf_modules = state["seen"], list(state["fpf_modules"])
        self.phases_run = list(state["phases_run"])
