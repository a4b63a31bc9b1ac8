"""`ce_u`: cross-entropy unlearning — pull each forget token's distribution to the model's own without it.

Yang, "CE-U: Cross Entropy Unlearning", 2025 (arXiv 2503.01224), as open-unlearning computes
it (`src/trainer/unlearn/ceu.py::cross_entropy_unlearning_loss`, `configs/trainer/CEU.yaml`):
at each forget answer position t (all but the first `ignore_first` answer tokens), the
target q_t is the model's own next-token distribution with the true token removed and
renormalised, held fixed (stop-gradient): q_t = sg(softmax(z_t with z_{t,y} = −∞)), and

    L = mean_t CE(q_t, softmax(z_t)) = mean_t [ H(q_t) − log(1 − p_{t,y}) ],

whose gradient in the logits is (p_t − q_t) / N: bounded, unlike gradient ascent's. There
is no retain term, as the reference (`retain_weight` 0; a positive one adds α·NLL(retain)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from palimpsest.train.batching import normalised_loss
from palimpsest.train.methods import WHOLE_WEIGHTS_BACKENDS, MethodInfo, Param, retain_weight
from palimpsest.unlearn.base import FORGET, UnlearningMethod

METHOD = MethodInfo(
    name="ce_u", family="unlearning", implementation="CrossEntropyUnlearning",
    summary="L = mean_t CE(sg(p_t without the true token), p_t) over forget answer tokens",
    paper="Yang, 2025 (arXiv 2503.01224)",
    packing_reason="it scores each example's logits from the model's outputs",
    params=(
        Param("ignore_first", "int", 1, "answer tokens at the start of each answer left out (the reference: 1)", low=0),
        retain_weight(0.0, "α, the weight of a retain NLL (the reference has none)"),
    ),
    **WHOLE_WEIGHTS_BACKENDS,
    projectable=True,
)


class CrossEntropyUnlearning(UnlearningMethod):
    def __init__(self, ignore_first: int, retain_weight: float):
        self.ignore_first, self.retain_weight = ignore_first, retain_weight

    def forget_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        rows = micro.rows(FORGET)
        mask = micro.token_mask & rows[:, None]
        mask = mask & (mask.cumsum(dim=1) > self.ignore_first)  # each answer's first tokens left out
        logits = outputs.logits[:, : micro.token_mask.shape[1]][mask].float()  # (N, V): the positions scored
        labels = _labels_at(micro)[mask]
        target = logits.detach().scatter(-1, labels[:, None], float("-inf")).softmax(-1)
        total = F.cross_entropy(logits, target, reduction="sum")
        items = micro.step_batch.parts.get(FORGET, [])
        counted = sum(max(0, len(item.answer) + 1 - self.ignore_first) for item in items)
        return normalised_loss(total, max(counted, 1), micro.world_size)


def _labels_at(micro) -> torch.Tensor:
    """(B, P) the label each scored position predicts (aligned with `micro.token_losses`)."""
    labels = micro.inputs["labels"]
    positions = micro.token_mask.shape[1] + 1  # the logits' positions (token_losses drops the last)
    shifted = F.pad(labels[:, 1:], (0, 1), value=-100)[:, labels.size(1) - positions :]
    return shifted[:, :-1].clamp(min=0)
