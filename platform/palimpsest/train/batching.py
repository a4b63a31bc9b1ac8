"""Batches for causal-LM fine-tuning on question/answer pairs, and the loss normalisation.

Correctness-critical and shared by every job kind, so it lives here once:
- the token-level loss normalised by the GLOBAL answer-token count, so N workers
  under DDP (which averages gradients) give the same gradient as one worker;
- the per-example answer log-likelihood (NPO, TOFU's truth ratio and membership
  inference all read it).
Which examples form a batch, and how it is sharded, is in `sampling.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class TokenizedQA:
    """One question/answer pair as token ids: the model sees prompt + answer + eos."""

    prompt: tuple[int, ...]
    answer: tuple[int, ...]


def tokenize_qa(tokenizer, examples, *, prompt_template: str = PROMPT_TEMPLATE) -> list[TokenizedQA]:
    """Token ids of prompt (with bos when the tokenizer has one) and answer (leading space, no eos)."""
    out = []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for ex in examples:
        prompt = bos + tokenizer.encode(prompt_template.format(question=ex.question), add_special_tokens=False)
        answer = tokenizer.encode(" " + ex.answer, add_special_tokens=False)
        out.append(TokenizedQA(tuple(prompt), tuple(answer)))
    return out


def collate_qa(items: list[TokenizedQA], *, pad_id: int, eos_id: int) -> dict[str, torch.Tensor]:
    """Right-padded inputs with labels only on answer tokens and the closing eos.

    Built as Python lists and turned into tensors once (a tensor per row costs more than the
    rest of the collation).
    """
    sequences = [list(it.prompt) + list(it.answer) + [eos_id] for it in items]
    width = max(len(s) for s in sequences)
    input_ids, labels, attention = [], [], []
    for it, seq in zip(items, sequences):
        pad = width - len(seq)
        input_ids.append(seq + [pad_id] * pad)
        labels.append([IGNORE_INDEX] * len(it.prompt) + seq[len(it.prompt):] + [IGNORE_INDEX] * pad)
        attention.append([1] * len(seq) + [0] * pad)
    return {"input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long)}


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token cross-entropy (0 where unlabelled) and the label mask, both (B, K-1).

    `logits` covers the last K positions of `labels`' T (K = T: all; the loop computes only
    those from the first one that predicts a label). The labels are shifted, not the logits
    (as transformers' own loss does): slicing the (B, K, V) logits would copy them, and copy
    their gradient back, every step.
    """
    positions = logits.size(1)
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)[:, labels.size(1) - positions:]  # t predicts t+1
    losses = F.cross_entropy(  # 0, with no gradient, at ignored positions
        logits.float().reshape(-1, logits.size(-1)), shifted.reshape(-1), ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shifted)
    return losses[:, :-1], shifted[:, :-1] != IGNORE_INDEX


def normalised_loss(token_loss_sum: torch.Tensor, global_tokens: int, world_size: int) -> torch.Tensor:
    """Loss whose DDP-averaged gradient equals the gradient of the global token mean.

    DDP averages gradients over `world_size` ranks, so each rank scales its token-loss
    sum by world_size / (answer tokens in the whole global batch).
    """
    return token_loss_sum * (world_size / max(global_tokens, 1))


def sequence_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, the summed log-probability of its labelled tokens and how many there are.

    log p(answer | question) = Σ_t log p(y_t | y_<t, question) over the answer tokens and
    the closing eos (the positions `collate_qa` labels). Divide by the count for the
    per-token average that TOFU's metrics call "avg loss" (negated).

    Returns:
        (B,) float log-likelihoods (carrying gradients) and (B,) token counts.
    """
    losses, mask = token_losses(logits, labels)
    return -losses.sum(dim=1), mask.sum(dim=1)
