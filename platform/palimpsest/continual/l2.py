"""`l2`: L2-SP, an L2 pull towards the previous task's weights.

Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with
Convolutional Networks", ICML 2018, the L2-SP penalty of Sec. 3:
    Ω(w) = (α/2)‖w_S − w_S^0‖² + (β/2)‖w_S̄‖².
Here the starting point w^0 is the model at the end of the previous task, taken over every
trainable parameter; a causal LM keeps its head from task to task, so there are no new
parameters w_S̄ and the β term is dropped. Task 0 has no starting point and no penalty.
"""

from __future__ import annotations

import torch

from palimpsest.train.hooks import LoopContext, TrainingMethod
from palimpsest.train.methods import BELOW_ZERO3, MethodInfo, Param

METHOD = MethodInfo(
    name="l2", family="continual", implementation="L2SP",
    summary="L2-SP: (α/2)‖θ−θ_prev‖² to the previous task's weights", paper="Li, Grandvalet & Davoine, 2018",
    params=(Param("alpha", "float", 1.0, "penalty strength α", low=0),),
    backends=BELOW_ZERO3,
    backend_reason="it reads whole weights, which ZeRO-3 partitions",
    private_reason="its penalty gradient bypasses Opacus's per-example gradients (the DP optimizer would drop it)",
)


def l2_sp_penalty(model: torch.nn.Module, anchor: dict[str, torch.Tensor], alpha: float) -> torch.Tensor:
    """(α/2) Σ_i (θ_i − θ^0_i)² over the parameters named in `anchor`.

    Args:
        model: the model being trained (unwrapped).
        anchor: parameter name -> starting-point weights θ^0, on the parameter's device.
        alpha: the penalty strength α.

    Returns:
        A scalar tensor that carries gradients to the anchored parameters.
    """
    total = None
    for name, param in model.named_parameters():
        if name in anchor:
            term = ((param - anchor[name]) ** 2).sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * alpha * total


class L2SP(TrainingMethod):
    """Fine-tune each task with (α/2)‖θ − θ_prev‖² added to the loss.

    Args:
        alpha: penalty strength α (≥ 0).
    """

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.anchor: dict[str, torch.Tensor] = {}

    def before_task(self, ctx: LoopContext) -> None:
        # Keep θ_prev next to the parameters: a host-to-device copy every step would dominate on GPU.
        self.anchor = {n: a.to(ctx.device) for n, a in self.anchor.items()}

    def loss(self, ctx: LoopContext, model, micro, outputs):
        if not self.anchor:
            return micro.nll()
        # Same weights on every rank, so every rank adds the same full term (DDP averages it to itself).
        return micro.nll() + micro.once_per_step(l2_sp_penalty(ctx.model, self.anchor, self.alpha))

    def after_task(self, ctx: LoopContext) -> None:
        self.anchor = {n: p.detach().clone() for n, p in ctx.model.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict:
        return {"anchor": {n: a.cpu() for n, a in self.anchor.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.anchor = dict(state["anchor"])
