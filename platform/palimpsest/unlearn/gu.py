"""GU — geometric-disentanglement unlearning, as a wrapper around any unlearning method with a forget objective.

Zhou et al., "Geometric-disentanglement Unlearning", 2025 (arXiv:2511.17100): remove from
the forget objective's gradient every component along the retain gradients, so that to
first order the step leaves the retain loss unchanged. Per step:

    g_f  = ∇ forget objective (synced over workers: the inner method's `forget_loss`)
    G    = [∇ℓ(r_1), …, ∇ℓ(r_k)]  per-sample answer-NLL gradients of k retain items
    Q    = an orthonormal basis of span(G): Gram–Schmidt, run twice (one pass loses
           orthogonality in floating point; the second restores it)
    step = (g_f − Q Qᵀ g_f) + α · mean_i ∇ℓ(r_i)

α is the inner method's retain weight (0 for grad_ascent: the step is the projected
forget gradient alone, orthogonal to every retain gradient used). This is the authors'
per-sample form (their `orthograd` trainer); their preconditioned variant (Adam's
geometry) is not implemented. The basis and the projection are computed in float64 (a
float32 dot product over millions of entries alone errs by ~1e-5 in cosine). Every
worker computes the same k per-sample gradients on the same weights (with
`torch.autograd.grad`, which leaves DDP's hooks alone), so the projection of the synced
gradient is identical on every rank. It needs whole gradients: DeepSpeed ZeRO partitions
them, so GU runs on ddp only.

Not a method file (no `METHOD`): the runner wraps a method with it when its spec says `gu`.
"""

from __future__ import annotations

import torch

from palimpsest.train.batching import collate_qa, token_losses
from palimpsest.train.config import MethodRun
from palimpsest.train.hooks import StepBatch, TrainingMethod
from palimpsest.unlearn.base import RETAIN

GU_MODULE, GU_CLASS = "palimpsest.unlearn.gu", "GeometricUnlearning"


def wrap(inner: MethodRun, samples: int) -> MethodRun:
    """`inner` served with GU's projection (`samples` retain gradients per step)."""
    params = {"inner": {"name": inner.name, "module": inner.module, "implementation": inner.implementation,
                        "params": dict(inner.params)}, "samples": samples}
    return MethodRun(f"{inner.name}+gu", GU_MODULE, GU_CLASS, params, optimisation=inner.optimisation,
                     model=inner.model, first_task=inner.first_task)


def orthonormal_basis(vectors: torch.Tensor, *, passes: int = 2, tolerance: float = 1e-6) -> torch.Tensor:
    """(m, d) orthonormal rows spanning the rows of `vectors` (k, d): Gram–Schmidt, `passes` times.

    A vector whose remainder is below `tolerance` × its own norm adds nothing (it lies in the
    span of the ones before it) and is dropped.
    """
    basis: list[torch.Tensor] = []
    for vector in vectors:
        norm = vector.norm()
        if norm == 0:
            continue
        residual = vector.clone()
        for _ in range(passes):
            for q in basis:
                residual -= (q @ residual) * q
        if residual.norm() > tolerance * norm:
            basis.append(residual / residual.norm())
    return torch.stack(basis) if basis else vectors.new_zeros((0, vectors.shape[1]))


def project_out(gradient: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """`gradient` minus its components along the orthonormal rows of `basis`."""
    return gradient - basis.T @ (basis @ gradient) if len(basis) else gradient


class GeometricUnlearning(TrainingMethod):
    def __init__(self, inner: dict, samples: int):
        self.inner = MethodRun(**inner).build()
        self.samples = samples
        self._step = 0
        self.diagnostics: dict[str, float] = {}

    # The inner method's hooks, unchanged.
    def prepare_model(self, ctx) -> None:
        self.inner.prepare_model(ctx)

    def before_task(self, ctx) -> None:
        self.inner.before_task(ctx)

    def after_step(self, ctx, step, batch) -> None:
        self.inner.after_step(ctx, step, batch)

    def after_task(self, ctx) -> None:
        self.inner.after_task(ctx)

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state.get("inner", {}))

    def batch(self, ctx, step: int) -> StepBatch:
        """The inner method's batch without its retain part: GU's own retain samples stand in for it."""
        self._step = step
        parts = self.inner.batch(ctx, step).parts
        return StepBatch({name: items for name, items in parts.items() if name != RETAIN})

    def loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        return self.inner.forget_loss(ctx, model, micro, outputs)

    def retain_gradients(self, ctx, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """(k, d) float64 per-sample gradients of the answer NLL of this step's k retain items (the same on every rank)."""
        items = ctx.pool_batch(RETAIN, self._step, self.samples)
        rows = []
        for item in items:
            inputs = {k: v.to(ctx.device) for k, v in collate_qa([item], pad_id=ctx.pad_id, eos_id=ctx.eos_id).items()}
            logits = ctx.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            losses, mask = token_losses(logits, inputs["labels"])
            grads = torch.autograd.grad(losses.sum() / mask.sum(), params, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                                   for g, p in zip(grads, params)]))
        return torch.stack(rows)

    def after_backward(self, ctx) -> None:
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        forget = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                            for p in params])
        retain = self.retain_gradients(ctx, params)
        basis = orthonormal_basis(retain)
        projected = project_out(forget, basis)
        cosines = (retain @ projected) / (retain.norm(dim=1) * projected.norm()).clamp(min=1e-30)
        self.diagnostics = {"gu_max_abs_cos": float(cosines.abs().max()) if len(cosines) else 0.0,
                            "gu_removed_share": float(1 - projected.norm() / forget.norm().clamp(min=1e-30))}
        step = projected
        if self.inner.uses_retain():
            step = projected + self.inner.retain_weight * retain.mean(dim=0)
        offset = 0
        for p in params:
            size = p.numel()
            p.grad = step[offset : offset + size].view_as(p).to(p.dtype)
            offset += size
        self.inner.after_backward(ctx)

    def progress(self) -> dict[str, float]:
        return dict(self.diagnostics)
