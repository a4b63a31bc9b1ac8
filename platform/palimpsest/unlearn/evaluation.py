"""TOFU-style evaluation of a model on question/answer splits (what each forget request is judged by).

`split_scores` runs the model on one split: per item the avg loss (mean token NLL) of the
answer, of the paraphrased answer and of each perturbed answer, and the greedy answer (to
eos or `max_new_tokens`, 200 as open-unlearning);
from those, with `metrics.tofu`: answer probability, ROUGE-L recall, truth ratios and the
split's truth-ratio score (forget side: mean min(R, 1/R); other splits: mean max(0, 1 − R)).
`unlearning_summary` combines splits into forget quality, model utility (TOFU's harmonic
mean of 9 numbers over retain, real authors and world facts, as open-unlearning) and forget
ROUGE.
"""

from __future__ import annotations

from palimpsest.data import QAExample
from palimpsest.metrics.tofu import (
    answer_probability, forget_quality, forget_truth_ratio_score, model_utility, retain_truth_ratio_score,
    rouge_l_recall, truth_ratios,
)
from palimpsest.train.batching import tokenize_qa
from palimpsest.train.evaluate import answer_log_likelihoods, greedy_answers


DEFAULT_MAX_NEW_TOKENS = 200  # open-unlearning's configs/generation/default.yaml


def avg_losses(model, tokenizer, questions: list[str], answers: list[str], *, batch_size: int = 64,
               device="cpu") -> list[float]:
    """Mean token NLL of each answer (and the closing eos) given its question, teacher-forced."""
    items = tokenize_qa(tokenizer, [QAExample(q, a) for q, a in zip(questions, answers)])
    pairs = answer_log_likelihoods(model, items, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                                   batch_size=batch_size, device=device)
    return [-log_likelihood / count for log_likelihood, count in pairs]


def generate_answers(model, tokenizer, examples: list[QAExample], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                     batch_size: int = 64, device="cpu") -> list[str]:
    """Each question's greedy answer, decoded: batched, to eos or `max_new_tokens` (open-unlearning's 200)."""
    items = tokenize_qa(tokenizer, examples)
    generated = []
    for start in range(0, len(items), batch_size):
        generated += greedy_answers(model, items[start : start + batch_size], pad_id=tokenizer.pad_token_id,
                                    eos_id=tokenizer.eos_token_id, device=device, max_new_tokens=max_new_tokens)
    return [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in generated]


OPTION_SPLITS = ("real_authors", "world_facts")  # TOFU's: scored against their answer with options (see below)
UTILITY_NAMES = {"retain": "retain", "real_authors": "ra", "world_facts": "wf"}  # open-unlearning's prefixes


def split_scores(model, tokenizer, examples: list[QAExample], *, forget: bool, batch_size: int = 64,
                 device="cpu", max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, options: bool = False) -> dict:
    """TOFU's per-split scores; `forget` picks the truth-ratio summary of the forget side.

    `options` (TOFU's real-authors and world-facts splits, as open-unlearning's
    `configs/eval/tofu_metrics/ra_*` / `wf_*`): the probability is normalised against the
    perturbed answers, P(answer) / (P(answer) + Σ P(perturbed)), and the truth ratio puts
    the perturbed answers over the answer itself (these splits have no paraphrase).

    Raises:
        ValueError: an example lacks a paraphrased answer (unless `options`) or perturbed answers (TOFU format).
    """
    missing = [e.question for e in examples if not (e.paraphrased_answer or options) or not e.perturbed_answers]
    if missing:
        raise ValueError(f"{len(missing)} examples lack paraphrased_answer / perturbed_answer (TOFU format), "
                         f"e.g. {missing[0]!r}")
    questions = [e.question for e in examples]
    answer_loss = avg_losses(model, tokenizer, questions, [e.answer for e in examples], batch_size=batch_size,
                             device=device)
    paraphrased_loss = answer_loss if options else avg_losses(
        model, tokenizer, questions, [e.paraphrased_answer for e in examples], batch_size=batch_size, device=device)
    flat = [(row, q, a) for row, (q, e) in enumerate(zip(questions, examples)) for a in e.perturbed_answers]
    flat_loss = avg_losses(model, tokenizer, [q for _, q, _ in flat], [a for _, _, a in flat],
                           batch_size=batch_size, device=device)
    perturbed_loss = [[] for _ in examples]
    for (row, _, _), loss in zip(flat, flat_loss):
        perturbed_loss[row].append(loss)
    ratios = truth_ratios(paraphrased_loss, perturbed_loss)
    predictions = generate_answers(model, tokenizer, examples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   device=device)
    return {
        "probability": answer_probability(answer_loss, perturbed_loss if options else None),
        "rouge_l": rouge_l_recall(predictions, [e.answer for e in examples]),
        "truth_ratio": forget_truth_ratio_score(ratios) if forget else retain_truth_ratio_score(ratios),
        "truth_ratios": ratios.tolist(),
        "avg_loss": answer_loss,
        "predictions": predictions,
    }


def utility_parts(scores: dict[str, dict]) -> dict[str, float]:
    """TOFU's model-utility parts under open-unlearning's names, from the splits present.

    retain: `retain_Q_A_Prob`, `retain_Q_A_ROUGE`, `retain_Truth_Ratio`; real authors and
    world facts: `ra_` / `wf_` + `Q_A_Prob_normalised`, `Q_A_ROUGE`, `Truth_Ratio` — the 9
    numbers of `configs/eval/tofu_metrics/model_utility.yaml`. The holdout (never-trained
    people) is not part of it: it is the MIA's non-members.
    """
    parts = {}
    for split, prefix in UTILITY_NAMES.items():
        if split in scores:
            block = scores[split]
            probability = "Q_A_Prob_normalised" if split in OPTION_SPLITS else "Q_A_Prob"
            parts.update({f"{prefix}_{probability}": block["probability"], f"{prefix}_Q_A_ROUGE": block["rouge_l"],
                          f"{prefix}_Truth_Ratio": block["truth_ratio"]})
    return parts


def unlearning_summary(scores: dict[str, dict], *, forget_split: str, retain_model_forget_ratios: list[float]) -> dict:
    """Forget quality, model utility (`scipy.stats.hmean` of `utility_parts`) and forget ROUGE-L."""
    parts = utility_parts(scores)
    return {
        "forget_quality": forget_quality(scores[forget_split]["truth_ratios"], retain_model_forget_ratios),
        "model_utility": model_utility(parts),
        "utility_parts": parts,
        "forget_rouge_l": scores[forget_split]["rouge_l"],
        "forget_truth_ratio": scores[forget_split]["truth_ratio"],
    }


MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
PRIVLEAK_ATTACK = "min_k"  # MUSE's PrivLeak uses Min-K% Prob
MIN_K = 0.4  # open-unlearning's configs/eval/{tofu,muse}_metrics/mia_min_k.yaml (the attack's own default is 0.2)


def model_scores(model, tokenizer, sets: dict[str, list[QAExample]], *, batch_size: int = 64, device="cpu",
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> dict:
    """A model on one point of a request sequence: TOFU scores per split, MIA AUC (forget vs holdout) and
    the forget set's exact memorization and extraction strength.

    `sets` holds "forget" (everything forgotten so far), "retain" (a sample of what
    remains) and "holdout" (never trained on), each in TOFU format. The attacks are
    open-unlearning's: Min-K% and Min-K%++ with k = 0.4 over the answer tokens without the
    closing eos, loss and zlib over all of them.
    """
    from palimpsest.metrics.mia import membership_inference, token_statistics
    from palimpsest.metrics.tofu import exact_memorization, extraction_strength

    splits = {name: split_scores(model, tokenizer, examples, forget=name == "forget", batch_size=batch_size,
                                 device=device, max_new_tokens=max_new_tokens, options=name in OPTION_SPLITS)
              for name, examples in sets.items()}
    ids = {"pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id, "batch_size": batch_size,
           "device": device}
    members, others = sets["forget"], sets["holdout"]
    forget = token_statistics(model, tokenize_qa(tokenizer, members), **ids)
    holdout = token_statistics(model, tokenize_qa(tokenizer, others), **ids)
    mia = membership_inference([t["log_probs"] for t in forget], [e.answer for e in members],
                               [t["log_probs"] for t in holdout], [e.answer for e in others], k=MIN_K,
                               member_z=[t["z"] for t in forget], non_member_z=[t["z"] for t in holdout],
                               min_k_without_eos=True)
    hits = [t["hits"] for t in forget]
    return {"splits": splits, "mia": {name: mia["attacks"][name]["auc"] for name in MIA_ATTACKS},
            "memorization": {"exact_memorization": exact_memorization(hits),
                             "extraction_strength": extraction_strength(hits)}}


def request_metrics(scores: dict, reference: dict) -> dict:
    """What one request left behind, against the retain model of that point (`reference`, from `model_scores`).

    Forget quality, model utility (TOFU's: retain, real authors, world facts), forget ROUGE-L / truth ratio /
    probability, exact memorization and extraction strength of the forget set, MIA AUC per
    attack (forget vs holdout: larger leaks more) and MUSE's privleak per attack
    (`metrics.tofu.privleak`: a memorised model ≈ −100, 0 ideal, positive over-unlearned),
    `privleak` itself on Min-K% (k = 0.4) as MUSE and open-unlearning.
    """
    from palimpsest.metrics.tofu import privleak

    summary = unlearning_summary(scores["splits"], forget_split="forget",
                                 retain_model_forget_ratios=reference["splits"]["forget"]["truth_ratios"])
    leaks = {name: privleak(scores["mia"][name], reference["mia"][name]) for name in MIA_ATTACKS}
    return {
        "forget_quality": summary["forget_quality"],
        "model_utility": summary["model_utility"],
        "forget_rouge": summary["forget_rouge_l"],
        "forget_truth_ratio": summary["forget_truth_ratio"],
        "forget_probability": scores["splits"]["forget"]["probability"],
        **scores["memorization"],
        "utility_parts": summary["utility_parts"],
        "mia": dict(scores["mia"]),
        "privleak": leaks[PRIVLEAK_ATTACK],
        "privleak_by_attack": leaks,
    }
