"""`idk_dpo`: DPO with "I don't know" preferred to the true answer, against the model as the request began.

TOFU's preference baseline as open-unlearning runs it ("IdkDPO": its `DPO` trainer with
`experiment=unlearn/tofu/idk.yaml`; `src/trainer/utils.py::compute_dpo_loss`): for each forget
question, the chosen answer is an "I don't know" drawn uniformly from the list
(`unlearn/idk.py`), the rejected one the true answer, log-likelihoods summed over each
answer's tokens (and eos), the reference a frozen copy of the model as the request began:

    L = −(2/β)·mean_i log σ(β·[(log π(idk_i) − log π_ref(idk_i)) − (log π(y_i) − log π_ref(y_i))])
        + α·NLL(retain)

(the 2/β prefactor is open-unlearning's; at the start, where π = π_ref, L_f = (2/β)·ln 2).
β = 0.1, γ = α = 1 as `configs/trainer/DPO.yaml`. Each rank pairs its own forget rows with
their refusals (a second forward of the model on those), so a pair never spans two workers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from palimpsest.models import unwrap
from palimpsest.train.batching import TokenizedQA, collate_qa, sequence_log_likelihood
from palimpsest.train.hooks import StepBatch
from palimpsest.train.methods import (
    WHOLE_WEIGHTS_BACKENDS, MethodInfo, Param, forget_weight, inverse_temperature, retain_weight,
)
from palimpsest.unlearn.base import FORGET, RETAIN, FrozenStart, UnlearningMethod, answer_rows
from palimpsest.unlearn.idk import draw_refusals

METHOD = MethodInfo(
    name="idk_dpo", family="unlearning", implementation="IdkDPO",
    summary="DPO preferring \"I don't know\" to the true answer, π_ref = the model as the request began, "
            "+ α·NLL(retain)",
    paper="Maini et al., 2024 (TOFU); Rafailov et al., 2023 (DPO)",
    params=(
        inverse_temperature(0.1),
        forget_weight(1.0, "γ, the weight of the DPO term"),
        retain_weight(),
        Param("idk_path", "str", None, "a file of \"I don't know\" answers, one per line (TOFU's idontknow.jsonl); "
                                       "null: the built-in 40", nullable=True),
    ),
    **WHOLE_WEIGHTS_BACKENDS,
    projectable=True,
)


class IdkDPO(UnlearningMethod):
    def __init__(self, beta: float, forget_weight: float, retain_weight: float, idk_path: str | None):
        self.beta, self.forget_weight, self.retain_weight, self.idk_path = beta, forget_weight, retain_weight, idk_path
        self.reference = FrozenStart()
        self._refusal: dict[tuple, tuple] = {}  # (prompt, true answer) -> this step's "I don't know" answer

    def batch(self, ctx, step: int) -> StepBatch:
        drawn = draw_refusals(ctx, step)
        self._refusal = {(q.prompt, q.answer): answer for q, answer in drawn}
        parts = {FORGET: [q for q, _ in drawn]}
        if self.uses_retain():
            parts[RETAIN] = ctx.pool_batch(RETAIN, step)
        return StepBatch(parts)

    def forget_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        rows = micro.rows(FORGET)
        true, _ = micro.sequence_log_likelihood(FORGET)
        reference_true, _ = answer_rows(micro, FORGET, self.reference.model)
        if not rows.any():
            return true.sum() * 0.0
        idk = collate_qa([TokenizedQA(prompt, self._refusal[(prompt, answer)])
                          for prompt, answer in _pairs(micro, rows)], pad_id=ctx.pad_id, eos_id=ctx.eos_id)
        idk = {key: value.to(true.device) for key, value in idk.items()}
        chosen, _ = sequence_log_likelihood(
            unwrap(model)(input_ids=idk["input_ids"], attention_mask=idk["attention_mask"]).logits, idk["labels"])
        with torch.no_grad():
            reference_chosen, _ = sequence_log_likelihood(
                self.reference.model(input_ids=idk["input_ids"], attention_mask=idk["attention_mask"]).logits,
                idk["labels"])
        margin = (chosen - reference_chosen) - (true - reference_true)
        total = (-2.0 / self.beta * F.logsigmoid(self.beta * margin)).sum()
        return self.forget_weight * micro.item_mean(FORGET, total)


def _pairs(micro, rows: torch.Tensor) -> list[tuple[tuple, tuple]]:
    """(prompt, answer) token ids of each `rows` row of the micro-batch (what `collate_qa` laid out)."""
    found = []
    for ids, labels, attention in zip(micro.inputs["input_ids"][rows], micro.inputs["labels"][rows],
                                      micro.inputs["attention_mask"][rows]):
        labelled = (labels != -100).nonzero().squeeze(1)
        start, end = int(labelled[0]), int(labelled[-1])  # the answer's first token, the closing eos
        found.append((tuple(ids[:start].tolist()), tuple(ids[start:end].tolist())))
    return found
