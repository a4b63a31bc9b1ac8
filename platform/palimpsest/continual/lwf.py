"""`lwf`: Learning without Forgetting, as logit distillation from the previous task's model.

Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017, the objective of Sec. 3
(Algorithm 1): L = λ_o L_old(Y_o, Ŷ_o) + L_new(Y_n, Ŷ_n) + R, with L_old the distillation loss
at temperature T (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
2015). A causal LM has one shared head, so the "old task outputs" are the next-token
distributions of the model as it was after task t−1 (the teacher) on the current batch:

    extra = λ · T² · mean over answer tokens of KL(softmax(z_teacher/T) ‖ softmax(z_student/T)).

KL rather than the paper's cross-entropy: they differ by the teacher's entropy, a constant,
so gradients agree and the term is exactly zero while the student still equals the teacher.
T² keeps the gradient scale independent of T (Hinton et al.). Task 0 has no teacher.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from palimpsest.continual import register
from palimpsest.continual.base import ContinualMethod, LoopState
from palimpsest.train.batching import IGNORE_INDEX


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student) at temperature T, averaged over the answer-token positions.

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
    return temperature**2 * per_token.sum() / max(int(mask.sum()), 1)


def frozen_copy(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of `model`'s architecture holding `weights`, in eval mode, with no gradients."""
    teacher = copy.deepcopy(model)
    teacher.load_state_dict(weights)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


@register("lwf")
class LwF(ContinualMethod):
    """Distil the previous task's model into the current one on the current task's answers.

    The teacher's weights are snapshotted in `after_task` (the model after task t−1) and
    the module is built from them in `before_task`: on a mid-task resume the loop calls
    `before_task` before it loads the mid-task weights, so copying the live model there
    would make the teacher a wrong model.

    Args:
        lam: weight λ of the distillation term (≥ 0).
        temperature: softening temperature T (> 0).
    """

    def __init__(self, lam: float = 1.0, temperature: float = 2.0):
        problems = []
        if lam < 0:
            problems.append(f"lam must be ≥ 0, got {lam}")
        if temperature <= 0:
            problems.append(f"temperature must be > 0, got {temperature}")
        if problems:
            raise ValueError("lwf: " + "; ".join(problems))
        self.lam, self.temperature = lam, temperature
        self.teacher_weights: dict[str, torch.Tensor] | None = None  # model after the previous task
        self.teacher: torch.nn.Module | None = None

    def before_task(self, state: LoopState) -> None:
        if self.teacher_weights is not None:
            self.teacher = frozen_copy(state.model, self.teacher_weights).to(state.device)
            self.teacher_weights = None  # the teacher module holds them now: one copy, not two

    def extra_loss(self, state: LoopState, model, batch, outputs):
        if self.teacher is None:
            return None
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # A mean over this micro-batch's answer tokens: DDP and the loop's 1/grad_accum average
        # those means, which is the global token mean whenever shards hold equal token counts.
        return self.lam * distillation_loss(outputs.logits, teacher_logits, batch["labels"], self.temperature)

    def after_task(self, state: LoopState) -> None:
        self.teacher = None  # the next task's teacher is this task's final model
        self.teacher_weights = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}

    def state_dict(self) -> dict:
        weights = self.teacher_weights
        if self.teacher is not None:
            weights = {k: v.cpu() for k, v in self.teacher.state_dict().items()}
        return {"teacher_weights": weights}

    def load_state_dict(self, state: dict) -> None:
        self.teacher_weights = state["teacher_weights"]
