"""`undial`: self-distillation with the true token's logit turned down.

Dong, Lin, Belkin, Huerta & Vulić, "UNDIAL: Self-Distillation with Adjusted Logits for
Robust Unlearning in Large Language Models", NAACL 2025, as open-unlearning computes it
(`src/trainer/utils.py::compute_undial_loss`, `configs/trainer/UNDIAL.yaml`): the teacher is
a frozen copy of the model as the request began; at every position t of a forget
sequence the student is trained towards

    q_t = softmax(z_t^teacher − β·onehot(y_t)),   L = mean_t CE(q_t, softmax(z_t^student)),

so the true next token loses β of logit and everything else keeps the teacher's shape
(bounded, unlike ascent). As the reference, the mean runs over every position of each
sequence, prompt and padding included (where there is no label, q_t is the teacher's
distribution: plain self-distillation). One departure, named: at those unlabelled positions
the reference's index −100 wraps to vocabulary id V − 100 and lowers THAT token's logit by
β — an indexing accident we do not reproduce. Here the mean is per sequence, then over the
forget items of the global batch (the reference's single batch mean when widths agree).
β = 10, γ = 1, α = 0 (no retain term) as the config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from palimpsest.train.methods import WHOLE_WEIGHTS_BACKENDS, MethodInfo, Param, forget_weight, retain_weight
from palimpsest.unlearn.base import FORGET, FrozenStart, UnlearningMethod

METHOD = MethodInfo(
    name="undial", family="unlearning", implementation="UNDIAL",
    summary="distil the request's starting model with the true token's logit lowered by β", paper="Dong et al., 2025",
    packing_reason="it distils each example's logits from the model's outputs",
    params=(
        Param("beta", "float", 10.0, "β, how much logit the true next token loses in the teacher", low=0),
        forget_weight(1.0, "γ, the weight of the distillation term"),
        retain_weight(0.0, "α, the weight of a retain NLL (the config: 0)"),
    ),
    **WHOLE_WEIGHTS_BACKENDS,
    projectable=True,
)


class UNDIAL(UnlearningMethod):
    full_logits = True  # every position is distilled, not only the answer's

    def __init__(self, beta: float, forget_weight: float, retain_weight: float):
        self.beta, self.forget_weight, self.retain_weight = beta, forget_weight, retain_weight
        self.teacher = FrozenStart()

    def forget_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        rows = micro.rows(FORGET)
        inputs = {key: micro.inputs[key][rows] for key in ("input_ids", "attention_mask")}
        with torch.no_grad():
            teacher = self.teacher.model(**inputs).logits[:, :-1].float()
        student = outputs.logits[rows][:, :-1].float()
        labels = micro.inputs["labels"][rows][:, 1:]
        labelled = labels != -100
        shift = F.one_hot(labels.clamp(min=0), teacher.size(-1)).float() * labelled[..., None]
        target = (teacher - self.beta * shift).softmax(-1)
        per_position = -(target * student.log_softmax(-1)).sum(-1)  # CE with a soft target
        per_item = per_position.mean(dim=1)
        return self.forget_weight * micro.item_mean(FORGET, per_item.sum())
