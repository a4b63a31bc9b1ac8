"""Question-answer evaluation: greedy exact match, teacher-forced token accuracy and loss.

Each rank evaluates a strided shard and the sums are all-reduced, so the figures do
not depend on the number of workers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from transformers import GenerationConfig

from palimpsest.models import unwrap
from palimpsest.train.batching import TokenizedQA, collate_qa, sequence_log_likelihood, token_losses


@torch.no_grad()
def evaluate_qa(
    model: torch.nn.Module,
    items: list[TokenizedQA],
    *,
    pad_id: int,
    eos_id: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """Evaluate `items`; returns answer_accuracy, token_accuracy, loss and count.

    answer_accuracy: share of questions whose greedy answer, up to eos, equals the
    reference answer token for token. token_accuracy and loss: teacher-forced, over
    the answer tokens and the closing eos (loss is the mean per token).
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    shard = items[rank::world_size]
    sums = torch.zeros(5, dtype=torch.float64)  # exact, questions, token_correct, tokens, loss_sum
    for start in range(0, len(shard), batch_size):
        chunk = shard[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_qa(chunk, pad_id=pad_id, eos_id=eos_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses, mask = token_losses(logits, batch["labels"])
        predicted = logits[:, :-1, :].argmax(-1)
        correct = (predicted == batch["labels"][:, 1:]) & mask
        sums[1] += len(chunk)
        sums[2] += correct.sum().item()
        sums[3] += mask.sum().item()
        sums[4] += losses.sum().double().item()
        sums[0] += greedy_exact_matches(model, chunk, pad_id=pad_id, eos_id=eos_id, device=device)
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        sums = sums.to(device)  # NCCL reduces device tensors only
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        sums = sums.cpu()
    if was_training:
        model.train()
    exact, questions, token_correct, tokens, loss_sum = sums.tolist()
    return {
        "answer_accuracy": exact / max(questions, 1),
        "token_accuracy": token_correct / max(tokens, 1),
        "loss": loss_sum / max(tokens, 1),
        "count": int(questions),
    }


@torch.no_grad()
def greedy_answers(model, items: list[TokenizedQA], *, pad_id: int, eos_id: int, device="cpu",
                   max_new_tokens: int | None = None) -> list[list[int]]:
    """Greedy continuations of each prompt, cut at the first eos (left-padded batch generation).

    By default generates one token more than the longest reference answer: enough to
    see whether the model stops (eos) right after the answer.
    """
    model = unwrap(model)
    width = max(len(it.prompt) for it in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        input_ids[row, width - len(it.prompt) :] = torch.tensor(it.prompt)
        attention[row, width - len(it.prompt) :] = 1
    max_new = max_new_tokens or max(len(it.answer) for it in items) + 1
    # An explicit config: a pretrained model's own (repetition penalty, n-gram bans, sampling)
    # would otherwise make this something other than argmax decoding.
    greedy = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new, pad_token_id=pad_id,
                              eos_token_id=eos_id)
    generated = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=greedy,
    )[:, width:].tolist()
    answers = []
    for tokens in generated:
        answers.append(tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens)
    return answers


def greedy_exact_matches(model, items: list[TokenizedQA], *, pad_id: int, eos_id: int, device="cpu") -> int:
    answers = greedy_answers(model, items, pad_id=pad_id, eos_id=eos_id, device=device)
    return sum(list(it.answer) == got for it, got in zip(items, answers))


EVAL_METRICS = ("answer_accuracy", "token_accuracy", "loss")


def evaluate_sets(model, eval_sets: dict[str, list[TokenizedQA]], names, *, pad_id: int, eos_id: int,
                  batch_size: int, device, rank: int = 0, world_size: int = 1) -> dict[str, dict[str, float]]:
    """`evaluate_qa` on each named set (ranks share the work; every rank gets every result)."""
    return {name: evaluate_qa(model, eval_sets[name], pad_id=pad_id, eos_id=eos_id, batch_size=batch_size,
                              device=device, rank=rank, world_size=world_size) for name in names}


def metric_records(results: dict[str, dict[str, float]], *, step: int, task: int) -> list[dict]:
    """metrics.jsonl rows (step, task, split, metric, value) for `evaluate_sets` results."""
    return [{"step": step, "task": task, "split": name, "metric": metric, "value": values[metric]}
            for name, values in results.items() for metric in EVAL_METRICS]


@torch.no_grad()
def answer_log_likelihoods(model, items: list[TokenizedQA], *, pad_id: int, eos_id: int, batch_size: int = 64,
                           device="cpu") -> list[tuple[float, int]]:
    """Per example, (log p(answer + eos | prompt), number of those tokens), teacher-forced."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    out: list[tuple[float, int]] = []
    for start in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in collate_qa(items[start : start + batch_size], pad_id=pad_id,
                                                         eos_id=eos_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        log_likelihood, counts = sequence_log_likelihood(logits, batch["labels"])
        out += list(zip(log_likelihood.double().tolist(), counts.tolist()))
    model.train(was_training)
    return out
