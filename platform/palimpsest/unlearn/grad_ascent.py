"""`grad_ascent`: gradient ascent on the forget set.

Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language Models",
ACL 2023; TOFU's first baseline (Maini et al., 2024). The loss is minus the answer NLL of
the forget items (the mean over their answer tokens, as open-unlearning's GradAscent
takes the model's mean token loss). Nothing holds the rest of the model in place.
"""

from __future__ import annotations

import torch

from palimpsest.train.methods import WHOLE_WEIGHTS_BACKENDS, MethodInfo
from palimpsest.unlearn.base import FORGET, UnlearningMethod

METHOD = MethodInfo(
    name="grad_ascent", family="unlearning", implementation="GradAscent",
    summary="ascend the forget set's answer NLL: L = −NLL(forget)", paper="Jang et al., 2023",
    **WHOLE_WEIGHTS_BACKENDS,
    projectable=True,
)


class GradAscent(UnlearningMethod):
    def forget_loss(self, ctx, model, micro, outputs) -> torch.Tensor:
        return -micro.nll(FORGET)
