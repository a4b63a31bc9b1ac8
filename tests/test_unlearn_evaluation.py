"""TOFU-style evaluation of a model: per-split scores from the model's own likelihoods and greedy answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from palimpsest.data import QAExample, generate_world, qa_texts, train_bpe_tokenizer
from palimpsest.metrics.tofu import forget_quality, model_utility
from palimpsest.models import build_model, model_config
from palimpsest.unlearn.evaluation import avg_losses, split_scores, unlearning_summary


@pytest.fixture(scope="module")
def setup():
    world = generate_world(seed=4, num_entities=6, attributes_per_entity=3)
    facts = list(world.facts)
    texts = qa_texts(facts) + [e.paraphrased_answer for e in facts] + [a for e in facts for a in e.perturbed_answers]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=400)
    model = build_model(model_config({"preset": "tiny-llama"}, vocab_size=len(tokenizer),
                                     pad_id=tokenizer.pad_token_id, bos_id=tokenizer.bos_token_id,
                                     eos_id=tokenizer.eos_token_id, seed=0))
    return model, tokenizer, facts


def test_split_scores_put_the_paraphrased_answer_over_the_mean_perturbed_loss(setup):
    model, tokenizer, facts = setup
    split = facts[:5]
    scores = split_scores(model, tokenizer, split, forget=True, batch_size=4)
    first = split[0]
    para = avg_losses(model, tokenizer, [first.question], [first.paraphrased_answer])[0]
    perturbed = avg_losses(model, tokenizer, [first.question] * len(first.perturbed_answers),
                           list(first.perturbed_answers))
    assert scores["truth_ratios"][0] == pytest.approx(math.exp(para - np.mean(perturbed)), rel=1e-6)
    assert scores["probability"] == pytest.approx(np.mean(np.exp(-np.array(scores["avg_loss"]))))
    ratios = np.array(scores["truth_ratios"])
    assert scores["truth_ratio"] == pytest.approx(np.mean(np.minimum(ratios, 1 / ratios)))
    retain_side = split_scores(model, tokenizer, split, forget=False, batch_size=5)
    assert retain_side["truth_ratio"] == pytest.approx(np.mean(np.maximum(0, 1 - ratios)))
    assert retain_side["truth_ratios"] == pytest.approx(scores["truth_ratios"])  # batching changes nothing
    assert 0 <= scores["rouge_l"] <= 1 and len(scores["predictions"]) == 5
    with pytest.raises(ValueError, match="paraphrased"):
        split_scores(model, tokenizer, [QAExample("q?", "a.")], forget=False)


def test_the_summary_takes_utility_over_the_other_splits_only():
    scores = {"forget": {"probability": 0.9, "rouge_l": 0.9, "truth_ratio": 0.2, "truth_ratios": [0.1, 0.2, 0.3]},
              "retain": {"probability": 0.5, "rouge_l": 1.0, "truth_ratio": 0.5, "truth_ratios": []},
              "holdout": {"probability": 0.25, "rouge_l": 0.5, "truth_ratio": 1.0, "truth_ratios": []}}
    summary = unlearning_summary(scores, forget_split="forget", retain_model_forget_ratios=[0.4, 0.5, 0.6])
    assert summary["model_utility"] == pytest.approx(model_utility(
        {"a": 0.5, "b": 1.0, "c": 0.5, "d": 0.25, "e": 0.5, "f": 1.0}))
    assert set(summary["utility_parts"]) == {f"{s}_{k}" for s in ("retain", "holdout")
                                             for k in ("probability", "rouge_l", "truth_ratio")}
    assert summary["forget_quality"] == pytest.approx(forget_quality([0.1, 0.2, 0.3], [0.4, 0.5, 0.6]))
    assert summary["forget_rouge_l"] == 0.9
