"""Unlearning metrics with TOFU's and MUSE's definitions (pure: numbers in, numbers out).

Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", 2024; Shi et al., "MUSE:
Machine Unlearning Six-Way Evaluation for Language Models", 2024. The reference code is
open-unlearning (`src/evals/metrics/memorization.py`, `utility.py`, `privacy.py`); these
are our own implementations of the same definitions.

Per item, `avg_loss` is the mean token NLL of an answer given its question (what
`train.evaluate.answer_log_likelihoods` gives, negated and divided by the token count).

- truth ratio R = P(perturbed) / P(paraphrased), where P(answer) = exp(−avg_loss) and the
  perturbed answers' avg losses are averaged first (a geometric mean of their probabilities);
- forget-side summary mean(min(R, 1/R)) (1: true and false equally likely, nothing known);
  non-forget summary mean(max(0, 1 − R)) (higher: the true answer is preferred);
- forget quality = KS-test p-value between the forget-set truth ratios of the unlearned
  model and of the retain model (high: indistinguishable from never having trained on it);
- answer probability = mean exp(−avg_loss), or with options P(true) / (P(true) + Σ P(false));
- ROUGE-L recall of the greedy answer against the reference (`rouge-score`, stemming on);
- model utility = harmonic mean of the probability, ROUGE-L and truth-ratio scores over
  the non-forget splits;
- privleak, MUSE's, exactly as open-unlearning's `privacy.py::privleak`: the Min-K% (k = 0.4)
  AUC of forget (members) against holdout (non-members) — large when the forget set is
  memorised — is reported as 1 − AUC (MUSE's convention), and privleak =
  100 · ((1 − AUC) − (1 − AUC_retain)) / (1 − AUC_retain). A memorised target scores about
  −100, a model the retain model cannot be told from 0, and a positive value is
  over-unlearning (the forget set now looks LESS likely than never-seen data);
- exact memorization and extraction strength (open-unlearning's `memorization.py`), from
  the teacher-forced argmax hits on the answer tokens (without the closing eos): EM = the
  fraction of hits; ES = 1 − k/n for the smallest k whose suffix is all hits (Carlini et
  al., "Quantifying Memorization Across Neural Language Models", 2023, as the reference
  computes it: no suffix at all also gives k = n − 1).
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import hmean, ks_2samp


def truth_ratios(paraphrased_avg_loss: Sequence[float], perturbed_avg_losses: Sequence[Sequence[float]]) -> np.ndarray:
    """R per item: exp(−mean perturbed avg loss) / exp(−paraphrased avg loss)."""
    paraphrased = np.asarray(paraphrased_avg_loss, dtype=np.float64)
    perturbed = [np.asarray(row, dtype=np.float64) for row in perturbed_avg_losses]
    if len(perturbed) != len(paraphrased):
        raise ValueError(f"{len(paraphrased)} paraphrased answers but {len(perturbed)} rows of perturbed ones")
    if any(row.size == 0 for row in perturbed):
        raise ValueError("every item needs at least one perturbed answer")
    mean_perturbed = np.array([row.mean() for row in perturbed])
    return np.exp(paraphrased - mean_perturbed)  # = exp(−perturbed) / exp(−paraphrased)


def forget_truth_ratio_score(ratios: Sequence[float]) -> float:
    """mean(min(R, 1/R)): 1 when true and false answers are equally likely (the forget side's ideal)."""
    r = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.minimum(r, 1.0 / r)))


def retain_truth_ratio_score(ratios: Sequence[float]) -> float:
    """mean(max(0, 1 − R)): higher when the true answer is preferred to the false ones."""
    return float(np.mean(np.maximum(0.0, 1.0 - np.asarray(ratios, dtype=np.float64))))


def forget_quality(unlearned_forget_ratios: Sequence[float], retain_model_forget_ratios: Sequence[float]) -> float:
    """KS-test p-value between the unlearned and the retain model's truth ratios on the forget set."""
    return float(ks_2samp(np.asarray(unlearned_forget_ratios), np.asarray(retain_model_forget_ratios)).pvalue)


def forget_quality_floor(items: int) -> float:
    """The smallest forget quality `items` forget-set items can give: the KS p-value of two wholly separated samples."""
    if items < 1:
        raise ValueError(f"a forget set needs at least one item, got {items}")
    return float(ks_2samp(np.arange(items), np.arange(items, 2 * items)).pvalue)


def smallest_forget_set(level: float = 0.05) -> int:
    """The fewest forget-set items with which forget quality can fall below `level` (4 at 0.05)."""
    items = 1
    while forget_quality_floor(items) >= level:
        items += 1
    return items


def answer_probability(avg_loss: Sequence[float], false_avg_losses: Sequence[Sequence[float]] | None = None) -> float:
    """Mean over items of exp(−avg_loss), or of P(true) / (P(true) + Σ P(false)) given the false options."""
    p_true = np.exp(-np.asarray(avg_loss, dtype=np.float64))
    if false_avg_losses is None:
        return float(p_true.mean())
    p_false = np.array([np.exp(-np.asarray(row, dtype=np.float64)).sum() for row in false_avg_losses])
    return float(np.mean(p_true / (p_true + p_false)))


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer():
    """One scorer per process (rouge-score logs "Using default tokenizer." at every new one)."""
    import logging

    from rouge_score import rouge_scorer

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.WARNING)
    try:
        return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    finally:
        absl.setLevel(level)


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L recall of each prediction against its reference (rouge-score, Porter stemming)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = _rouge_l_scorer()
    return float(np.mean([scorer.score(ref, pred)["rougeL"].recall for pred, ref in zip(predictions, references)]))


def model_utility(scores: Mapping[str, float]) -> float:
    """Harmonic mean of the non-forget scores (probability, ROUGE-L, truth ratio per split); 0 if any is 0."""
    values = np.asarray(list(scores.values()), dtype=np.float64)
    if values.size == 0 or (values < 0).any():
        raise ValueError(f"model utility needs non-negative scores, got {dict(scores)}")
    return 0.0 if (values == 0).any() else float(hmean(values))


def privleak(auc_unlearned: float, auc_retain: float) -> float | None:
    """MUSE's PrivLeak in percent, as open-unlearning: 100 · ((1 − AUC) − (1 − AUC_retain)) / (1 − AUC_retain).

    AUCs are forget-vs-holdout membership AUCs (1: the forget set is memorised). A memorised
    target scores about −100, 0 is ideal, positive is over-unlearning. The reference adds
    1e-10 to the denominator; so does this. None when the retain model's AUC is 1 (the
    reference would divide by 1e-10; tiny sets only).
    """
    score, reference = 1.0 - auc_unlearned, 1.0 - auc_retain
    if reference == 0:
        return None
    return (score - reference) / (reference + 1e-10) * 100.0


def exact_memorization(hits: Sequence[Sequence[bool]]) -> float | None:
    """Mean over items of the fraction of answer tokens the model predicts (argmax, teacher-forced).

    Items with no tokens are left out, as the reference; None when every item is empty.
    """
    rates = [float(np.mean(row)) for row in hits if len(row)]
    return float(np.mean(rates)) if rates else None


def extraction_strength(hits: Sequence[Sequence[bool]]) -> float:
    """Mean over items of 1 − k/n, k the first start whose whole suffix is predicted (open-unlearning's loop).

    As the reference: the loop over k in range(n) ends at k = n − 1 when no suffix matches,
    so a wholly missed item scores 1/n; an item with no tokens scores 0.
    """
    values = []
    for row in hits:
        row = np.asarray(row, dtype=bool)
        n = len(row)
        if n == 0:
            values.append(0.0)
            continue
        k = 0
        for k in range(n):
            if row[k:].all():
                break
        values.append(1.0 - k / n)
    return float(np.mean(values))
