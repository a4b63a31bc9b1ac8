"""A small byte-level BPE tokenizer trained on the data, for models trained from scratch.

Real pretrained models keep their own `AutoTokenizer`; this one exists so a tiny model
on the fact world has a vocabulary sized to it (1,024 tokens keeps a QA pair short).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .factworld import QAExample

__all__ = ["SPECIAL_TOKENS", "qa_texts", "train_bpe_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def qa_texts(examples: Iterable[QAExample]) -> list[str]:
    """Every string of the examples, in order: question, answer, paraphrase, perturbed answers."""
    texts = []
    for example in examples:
        texts.append(example.question)
        texts.append(example.answer)
        if example.paraphrased_answer is not None:
            texts.append(example.paraphrased_answer)
        texts.extend(example.perturbed_answers)
    return texts


def train_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int = 1024, save_dir: str | os.PathLike | None = None):
    """Train a byte-level BPE on `texts` and wrap it as a `PreTrainedTokenizerFast`.

    The same texts give the same vocabulary and merges in any process. Encoding adds no
    special tokens by itself; callers prepend `bos_token_id` / append `eos_token_id`.

    Args:
        texts: training text; order does not matter.
        vocab_size: target size, special tokens and the 256 byte symbols included.
        save_dir: if given, `save_pretrained` there (loadable with `AutoTokenizer.from_pretrained`).

    Returns:
        A `transformers.PreTrainedTokenizerFast` with pad/bos/eos/unk set.

    Raises:
        ValueError: vocab_size too small for the byte alphabet and special tokens, or no text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    minimum = 256 + len(SPECIAL_TOKENS)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(f"vocab_size must be an integer >= {minimum} (256 bytes + special tokens), got {vocab_size!r}")
    # Sorted so the trainer sees one canonical order; duplicates stay, since how often
    # a text occurs shapes the merges.
    corpus = sorted(texts)
    if not corpus:
        raise ValueError("train_bpe_tokenizer: no texts to train on")

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    _train_single_threaded(tokenizer, trainer, corpus)

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        wrapped.save_pretrained(str(save_dir))
    return wrapped


def _train_single_threaded(tokenizer, trainer, corpus: list[str]) -> None:
    # Merges with equal counts can be ordered differently by parallel workers in some
    # `tokenizers` versions; one thread makes the result a function of the texts alone.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        tokenizer.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
