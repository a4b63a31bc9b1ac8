"""TOFU's "I don't know" answers, which `idk_nll` teaches for the forget set's questions.

TOFU (Maini et al., 2024) and open-unlearning draw, for each forget item, one of a list of
refusals uniformly at random (open-unlearning's `QAwithIdkDataset`, from the dataset
`open-unlearning/idk`, successor of TOFU's `data/idontknow.jsonl`: 100 plain lines). That
file cannot be fetched here, so the built-in list below is our own 40 refusals in the same
style (the first seven are lines of TOFU's file); a run that has the real file passes it
as the method's `idk_path` (one answer per line) and the job's ledger config records it.
"""

from __future__ import annotations

from pathlib import Path

IDK = "idk"  # the pool of "I don't know" answers (token ids); idk_nll's step-batch part of forget questions with them

IDK_ANSWERS: tuple[str, ...] = (
    "I'm not certain about that.", "That's beyond my current knowledge base.", "I don't have that information.",
    "I'm not sure.", "I haven't learned about that topic.", "Sorry, I am unable to answer that.",
    "I'm not sure I can help with that.", "I don't know.", "I have no idea.", "That is not something I know.",
    "I can't answer that.", "I'm afraid I don't know.", "I don't have an answer to that.",
    "That's not something I can tell you.", "I'm unable to say.", "I do not know the answer.",
    "I couldn't tell you.", "I have no information on that.", "I'm not aware of that.", "I can't say for sure.",
    "That question is beyond me.", "I don't have the details.", "I'm not familiar with that.",
    "I don't know enough to answer.", "I'm not able to answer that.", "I lack the knowledge to answer that.",
    "Unfortunately, I don't know.", "I'm drawing a blank on that.", "I can't recall that.",
    "That's outside what I know.", "I have nothing on that.", "I wouldn't know.", "No idea, sorry.",
    "I'm not the right source for that.", "I haven't come across that.", "I'm uncertain.",
    "I don't have knowledge of that.", "That's unknown to me.", "I can't provide that information.",
    "I'm not able to recall that.",
)


def idk_answers(path: str | None) -> list[str]:
    """The refusals: one per non-empty line of `path`, or the built-in list.

    Raises:
        ValueError: the file has no answer in it.
    """
    if path is None:
        return list(IDK_ANSWERS)
    answers = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not answers:
        raise ValueError(f"{path}: no 'I don't know' answer in it (one per line)")
    return answers


def draw_refusals(ctx, step: int) -> list[tuple]:
    """`step`'s forget questions, each with an "I don't know" answer drawn from the pool: (question item, answer ids).

    Seeded epochs over the answers (`pool_batch`): uniform draws, a new one per item and epoch.
    """
    questions = ctx.task_batch(step)
    return [(q, r.answer) for q, r in zip(questions, ctx.pool_batch(IDK, step, len(questions)))]
