"""`kappatune`: train only the weight matrices with the lowest condition number.

Ludwig, "The Condition Number as a Scale-Invariant Proxy for Information Encoding in
Neural Units" (KappaTune), 2025 (arXiv:2506.16289). For every weight tensor W with at
least two dimensions, κ(W) = σ_max(W) / σ_min(W). The paper argues that a high κ marks a
unit that has specialised (selectively amplifies and compresses its input), so it
fine-tunes only the `top_k` tensors with the *smallest* κ and freezes everything else
(1-D tensors such as norms included); its reference code ranks ascending by κ and may
skip tensors with a dimension above `max_dim` (embeddings). The selection is made once
from the weights the run starts from and kept in `state_dict()`, so every task and every
resume trains the same tensors.
"""

from __future__ import annotations

import math

import torch

from palimpsest.train.hooks import LoopContext, TrainingMethod
from palimpsest.train.methods import BELOW_ZERO3, MethodInfo, Param

METHOD = MethodInfo(
    name="kappatune", family="continual", implementation="KappaTune",
    summary="train only the weight tensors chosen by condition number κ = σmax/σmin (lowest κ, as the paper)",
    paper="Ludwig, 2025 (KappaTune)",
    params=(
        Param("fraction", "float", 0.25, "share of the ≥ 2-D tensors to train", low=0, high=1, low_open=True),
        Param("top_k", "int", None, "train exactly this many tensors instead", low=1, nullable=True),
        Param("max_dim", "int", None, "skip tensors with a dimension above this (embeddings)", low=1, nullable=True),
        Param("order", "str", "lowest", "lowest κ (the paper) or highest", choices=("lowest", "highest")),
    ),
    backends=BELOW_ZERO3,
    backend_reason="it reads whole weights (singular values), which ZeRO-3 partitions",
    private=True,
)

def condition_number(weight: torch.Tensor) -> float:
    """κ = σ_max / σ_min of a matrix (inf when it is rank-deficient); >2-D tensors are flattened to (rows, ·)."""
    matrix = weight.detach().float().reshape(weight.shape[0], -1).cpu()
    singular = torch.linalg.svdvals(matrix)  # descending
    smallest = singular[-1].item()
    return singular[0].item() / smallest if smallest > 0 else math.inf


def condition_numbers(model: torch.nn.Module, *, max_dim: int | None = None) -> dict[str, float]:
    """κ of every parameter with ≥ 2 dimensions (and, if `max_dim` is set, no dimension above it)."""
    return {name: condition_number(param) for name, param in model.named_parameters()
            if param.ndim >= 2 and (max_dim is None or max(param.shape) <= max_dim)}


def select_by_condition(kappas: dict[str, float], count: int, *, order: str = "lowest") -> list[str]:
    """The `count` names with the lowest (or highest) κ; ties go to the earlier name."""
    ranked = sorted(kappas, key=lambda n: (kappas[n] if order == "lowest" else -kappas[n], n))
    return ranked[:count]


class KappaTune(TrainingMethod):
    """Selective fine-tuning of the best-conditioned weight matrices; all other tensors frozen.

    Args:
        fraction: share of the candidate (≥ 2-D) tensors to train, rounded, at least one.
        top_k: train exactly this many tensors instead (overrides `fraction`).
        max_dim: skip tensors with any dimension above this (the paper's guard for embeddings).
        order: "lowest" κ, as in the paper; "highest" trains the most anisotropic tensors instead.
    """

    def __init__(self, fraction: float, top_k: int | None, max_dim: int | None, order: str):
        self.fraction, self.top_k, self.max_dim, self.order = fraction, top_k, max_dim, order
        self.kappas: dict[str, float] = {}
        self.selected: list[str] = []

    def count(self, candidates: int) -> int:
        """How many tensors to train out of `candidates`."""
        wanted = self.top_k if self.top_k is not None else max(1, round(self.fraction * candidates))
        return min(wanted, candidates)

    def before_task(self, ctx: LoopContext) -> None:
        if not self.selected:
            # Chosen once from the starting weights (task 0; a resume reloads it from state_dict).
            self.kappas = condition_numbers(ctx.model, max_dim=self.max_dim)
            if not self.kappas:
                raise ValueError("kappatune: the model has no ≥ 2-D weight tensors to choose from")
            self.selected = select_by_condition(self.kappas, self.count(len(self.kappas)), order=self.order)
        chosen = set(self.selected)
        names = {n for n, _ in ctx.model.named_parameters()}
        if not chosen <= names:
            raise ValueError(f"kappatune: selected tensors missing from the model: {sorted(chosen - names)[:3]}")
        for name, param in ctx.model.named_parameters():
            # The backend builds its optimizer after this hook from requires_grad params only,
            # so frozen tensors get neither updates nor weight decay.
            param.requires_grad_(name in chosen)

    def state_dict(self) -> dict:
        return {"selected": list(self.selected), "kappas": dict(self.kappas)}

    def load_state_dict(self, state: dict) -> None:
        self.selected, self.kappas = list(state["selected"]), dict(state["kappas"])
