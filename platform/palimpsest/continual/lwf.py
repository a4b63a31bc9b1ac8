"""`lwf`: Learning without Forgetting, as logit distillation from the previous task's model.

Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017, the objective of Sec. 3
(Algorithm 1): L = λ_o L_old(Y_o, Ŷ_o) + L_new(Y_n, Ŷ_n) + R, with L_old the distillation loss
at temperature T (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
2015). A causal LM has one shared head, so the "old task outputs" are the next-token
distributions of the model as it was after task t−1 (the teacher) on the current batch:

    extra = λ · mean over answer tokens of KL(softmax(z_teacher/T) ‖ softmax(z_student/T)),

with the paper's λ_o = 1 and T = 2. KL rather than the paper's cross-entropy: they differ
by the teacher's entropy, a constant, so gradients agree and the term is exactly zero
while the student still equals the teacher. `t_squared: true` multiplies the term by T²
(Hinton et al.'s scaling, which keeps the gradient scale independent of T; not in the LwF
paper, and 4× its loss at T = 2). Task 0 has no teacher.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from palimpsest.train.batching import IGNORE_INDEX
from palimpsest.train.hooks import LoopContext, TrainingMethod
from palimpsest.train.methods import BELOW_ZERO3, MethodInfo, Param

METHOD = MethodInfo(
    name="lwf", family="continual", implementation="LwF",
    summary="λ·KL(teacher ‖ student) at temperature T on answer tokens, teacher = the model before the task",
    paper="Li & Hoiem, 2016",
    packing_reason="it distils the teacher's logits row by row from the model's outputs",
    params=(
        Param("lam", "float", 1.0, "weight λ_o of the distillation term", low=0),
        Param("temperature", "float", 2.0, "softening temperature T", low=0, low_open=True),
        Param("t_squared", "bool", False, "multiply the term by T² (Hinton et al.'s scaling; not the paper's)"),
    ),
    backends=BELOW_ZERO3,
    backend_reason="its teacher is a copy of the whole weights, which ZeRO-3 partitions",
    private_reason="its teacher's outputs on the training data enter the loss unclipped",
)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, *, t_squared: bool = False) -> torch.Tensor:
    """KL(teacher ‖ student) at temperature T (× T² if `t_squared`), averaged over the answer-token positions.

    Positions follow `token_losses`: logits at position i predict labels[i + 1], and only
    positions whose next label is not IGNORE_INDEX count.

    Args:
        student_logits: (B, T, V) logits of the model being trained.
        teacher_logits: (B, T, V) logits of the frozen previous-task model.
        labels: (B, T) labels as `collate_qa` builds them.
        temperature: softening temperature T > 0.

    Returns:
        A scalar; zero when no position is labelled.
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    student = F.log_softmax(student_logits[:, :-1, :].float() / temperature, dim=-1)[mask]
    teacher = F.log_softmax(teacher_logits[:, :-1, :].float() / temperature, dim=-1)[mask]
    # kl_div(input=log q, target=log p, log_target) = Σ p (log p − log q): identical rows give exactly 0.
    per_token = F.kl_div(student, teacher, reduction="none", log_target=True).sum(-1)
    scale = temperature**2 if t_squared else 1.0
    return scale * per_token.sum() / max(int(mask.sum()), 1)


def frozen_copy(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of `model`'s architecture holding `weights`, in eval mode, with no gradients."""
    teacher = copy.deepcopy(model)
    teacher.load_state_dict(weights)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class LwF(TrainingMethod):
    """Distil the previous task's model into the current one on the current task's answers.

    The teacher's weights are snapshotted in `after_task` (the model after task t−1) and
    the module is built from them in `before_task`: on a mid-task resume the loop calls
    `before_task` before it loads the mid-task weights, so copying the live model there
    would make the teacher a wrong model.

    Args:
        lam: weight λ of the distillation term (≥ 0).
        temperature: softening temperature T (> 0).
        t_squared: multiply the term by T².
    """

    full_logits = True  # distils the teacher's logits at every position

    def __init__(self, lam: float, temperature: float, t_squared: bool):
        self.lam, self.temperature, self.t_squared = lam, temperature, t_squared
        self.teacher_weights: dict[str, torch.Tensor] | None = None  # model after the previous task
        self.teacher: torch.nn.Module | None = None

    def before_task(self, ctx: LoopContext) -> None:
        if self.teacher_weights is not None:
            self.teacher = frozen_copy(ctx.model, self.teacher_weights).to(ctx.device)
            self.teacher_weights = None  # the teacher module holds them now: one copy, not two

    def loss(self, ctx: LoopContext, model, micro, outputs):
        if self.teacher is None:
            return micro.nll()
        inputs = micro.inputs
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        # A mean over this micro-batch's answer tokens: DDP and the accumulation average those
        # means, which is the global token mean whenever shards hold equal token counts.
        term = distillation_loss(outputs.logits, teacher_logits, inputs["labels"], self.temperature,
                                 t_squared=self.t_squared)
        return micro.nll() + micro.once_per_step(self.lam * term)

    def after_task(self, ctx: LoopContext) -> None:
        self.teacher = None  # the next task's teacher is this task's final model
        self.teacher_weights = {k: v.detach().cpu().clone() for k, v in ctx.model.state_dict().items()}

    def state_dict(self) -> dict:
        weights = self.teacher_weights
        if self.teacher is not None:
            weights = {k: v.cpu() for k, v in self.teacher.state_dict().items()}
        return {"teacher_weights": weights}

    def load_state_dict(self, state: dict) -> None:
        self.teacher_weights = state["teacher_weights"]
