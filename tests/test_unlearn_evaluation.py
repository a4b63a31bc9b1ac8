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


def _avg_loss(model, tokenizer, question: str, answer: str) -> float:
    """The mean NLL of the answer's tokens and eos, from one unpadded forward pass (independent of the code under
    test: no batching, no padding, no shared helper but the tokenizer)."""
    import torch

    from palimpsest.train.batching import tokenize_qa

    (item,) = tokenize_qa(tokenizer, [QAExample(question, answer)])
    sequence = torch.tensor([[*item.prompt, *item.answer, tokenizer.eos_token_id]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=sequence).logits[0, :-1].double(), dim=-1)
    labelled = log_probs[len(item.prompt) - 1 :].gather(1, sequence[0, len(item.prompt) :, None])
    return float(-labelled.mean())


def test_avg_loss_is_the_mean_token_nll_of_answer_and_eos(setup):
    model, tokenizer, facts = setup
    got = avg_losses(model, tokenizer, [f.question for f in facts[:5]], [f.answer for f in facts[:5]], batch_size=2)
    expected = [_avg_loss(model, tokenizer, f.question, f.answer) for f in facts[:5]]
    assert got == pytest.approx(expected, rel=1e-5)  # a sum, not divided by the token count, would be ~10× these


def test_split_scores_put_the_paraphrased_answer_over_the_mean_perturbed_loss(setup):
    model, tokenizer, facts = setup
    split = facts[:5]
    scores = split_scores(model, tokenizer, split, forget=True, batch_size=4)
    first = split[0]
    para = _avg_loss(model, tokenizer, first.question, first.paraphrased_answer)
    perturbed = [_avg_loss(model, tokenizer, first.question, a) for a in first.perturbed_answers]
    assert scores["truth_ratios"][0] == pytest.approx(math.exp(para - np.mean(perturbed)), rel=1e-5)
    assert scores["avg_loss"][0] == pytest.approx(_avg_loss(model, tokenizer, first.question, first.answer), rel=1e-5)
    assert scores["probability"] == pytest.approx(np.mean(np.exp(-np.array(scores["avg_loss"]))))
    ratios = np.array(scores["truth_ratios"])
    assert scores["truth_ratio"] == pytest.approx(np.mean(np.minimum(ratios, 1 / ratios)))
    retain_side = split_scores(model, tokenizer, split, forget=False, batch_size=5)
    assert retain_side["truth_ratio"] == pytest.approx(np.mean(np.maximum(0, 1 - ratios)))
    assert retain_side["truth_ratios"] == pytest.approx(scores["truth_ratios"])  # batching changes nothing
    assert 0 <= scores["rouge_l"] <= 1 and len(scores["predictions"]) == 5
    with pytest.raises(ValueError, match="paraphrased"):
        split_scores(model, tokenizer, [QAExample("q?", "a.")], forget=False)


def _block(probability, rouge, truth):
    return {"probability": probability, "rouge_l": rouge, "truth_ratio": truth, "truth_ratios": []}


def test_model_utility_is_tofus_nine_numbers_under_open_unlearnings_names_without_the_holdout():
    scores = {"forget": {**_block(0.9, 0.9, 0.2), "truth_ratios": [0.1, 0.2, 0.3]},
              "retain": _block(0.6, 0.6, 0.6), "real_authors": _block(0.6, 0.6, 0.6),
              "world_facts": _block(0.6, 0.6, 0.6), "holdout": _block(0.02, 0.05, 0.01)}
    summary = unlearning_summary(scores, forget_split="forget", retain_model_forget_ratios=[0.4, 0.5, 0.6])
    assert set(summary["utility_parts"]) == {
        "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio", "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE",
        "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio"}
    assert summary["model_utility"] == pytest.approx(0.6)  # the never-trained holdout is the MIA's, not utility's
    # Done-means 1 (#22): degrading every retain answer halves the retain parts and moves utility by >= 25%
    # (the old 6-number utility, dominated by the near-zero holdout, moved 9%).
    degraded = {**scores, "retain": _block(0.3, 0.3, 0.3)}
    worse = unlearning_summary(degraded, forget_split="forget", retain_model_forget_ratios=[0.4, 0.5, 0.6])
    assert worse["model_utility"] <= 0.75 * summary["model_utility"] + 1e-12
    assert summary["forget_quality"] == pytest.approx(forget_quality([0.1, 0.2, 0.3], [0.4, 0.5, 0.6]))
    assert summary["forget_rouge_l"] == 0.9


def test_real_authors_and_world_facts_are_scored_against_their_options(setup):
    """open-unlearning's ra/wf: P(answer)/(P(answer) + Σ P(perturbed)), truth ratio of perturbed over the answer."""
    model, tokenizer, facts = setup
    fact = facts[3]
    scores = split_scores(model, tokenizer, [QAExample(fact.question, fact.answer,
                                                       perturbed_answers=fact.perturbed_answers)],
                          forget=False, options=True)
    true = math.exp(-_avg_loss(model, tokenizer, fact.question, fact.answer))
    wrong = [math.exp(-_avg_loss(model, tokenizer, fact.question, a)) for a in fact.perturbed_answers]
    assert scores["probability"] == pytest.approx(true / (true + sum(wrong)), rel=1e-5)
    ratio = math.exp(np.mean([math.log(w) for w in wrong])) / true
    assert scores["truth_ratios"][0] == pytest.approx(ratio, rel=1e-5)
    assert scores["truth_ratio"] == pytest.approx(max(0.0, 1 - ratio), rel=1e-5, abs=1e-9)


def test_generation_runs_to_eos_so_a_long_winded_true_answer_keeps_its_rouge(setup):
    """Done-means 7 (#22): the old cap (longest reference + 1 tokens) cut a model that says more before the answer,
    which read as forgetting; open-unlearning generates up to 200 new tokens."""
    import torch

    from palimpsest.train.batching import tokenize_qa
    from palimpsest.unlearn.evaluation import generate_answers
    from palimpsest.metrics.tofu import rouge_l_recall

    _, tokenizer, facts = setup
    model = build_model(model_config({"preset": "tiny-llama"}, vocab_size=len(tokenizer), pad_id=tokenizer.pad_token_id,
                                     bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, seed=1))
    fact = facts[0]
    words = set(fact.answer.lower().rstrip(".").split())
    others = [e.answer for e in facts if not words & set(e.answer.lower().rstrip(".").split())]
    preamble = " ".join(others[:2])  # sentences sharing no word with the answer, then the answer itself
    (item,) = tokenize_qa(tokenizer, [QAExample(fact.question, f"{preamble} {fact.answer}")])
    ids = torch.tensor([list(item.prompt) + list(item.answer) + [tokenizer.eos_token_id]])
    labels = ids.clone()
    labels[0, : len(item.prompt)] = -100
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(600):  # memorise the one long-winded answer (to a loss below 5e-3: the steps depend on the CPU)
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        if loss.item() < 5e-3:
            break
        loss.backward()
        optimizer.step()
    model.eval()
    (reference,) = tokenize_qa(tokenizer, [fact])
    capped, full = (generate_answers(model, tokenizer, [fact], max_new_tokens=cap)
                    for cap in (len(reference.answer) + 1, 200))
    assert full[0] == f"{preamble} {fact.answer}"  # it ran to its eos, not to the cap
    assert rouge_l_recall(full, [fact.answer]) == 1.0
    assert rouge_l_recall(capped, [fact.answer]) < 0.5  # what the old cap reported
    assert split_scores(model, tokenizer, [fact], forget=False)["rouge_l"] == 1.0  # the default is the full length


def _memorise(tokenizer, examples, *, seed: int, steps: int = 600):
    """A tiny Llama trained on `examples` until it knows them: plain full-batch Adam until the mean loss is below
    5e-3 (~80 steps at lr 3e-3; lr 1e-2 for a fixed 150 steps was spiky enough to end short on another CPU)."""
    import torch

    from palimpsest.train.batching import collate_qa, tokenize_qa

    model = build_model(model_config({"preset": "tiny-llama"}, vocab_size=len(tokenizer), pad_id=tokenizer.pad_token_id,
                                     bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, seed=seed))
    batch = collate_qa(tokenize_qa(tokenizer, examples), pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(**batch).loss
        if loss.item() < 5e-3:
            break
        loss.backward()
        optimizer.step()
    return model.eval()


def test_privleak_reads_about_minus_100_for_a_memorised_target_against_its_retain_model(setup):
    """Done-means 2 (#22): MUSE's sign. The target memorised the forget people; the retain model never saw them."""
    from palimpsest.unlearn.evaluation import model_scores, request_metrics

    _, tokenizer, facts = setup
    people = [facts[i : i + 3] for i in range(0, len(facts), 3)]
    forget, retain, holdout = people[0] + people[1], people[2] + people[3], people[4] + people[5]
    sets = {"forget": forget, "retain": retain, "holdout": holdout}
    target = model_scores(_memorise(tokenizer, forget + retain, seed=1), tokenizer, sets)
    reference = model_scores(_memorise(tokenizer, retain, seed=1), tokenizer, sets)
    assert target["mia"]["min_k"] == 1.0  # memorised: every forget item scores above every holdout item
    got = request_metrics(target, reference)
    assert got["privleak"] == pytest.approx(-100.0, abs=1e-6)
    assert request_metrics(reference, reference)["privleak"] == pytest.approx(0.0)
    assert set(got["privleak_by_attack"]) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
    # Measured: EM 0.93 / ES 0.66 for the target, 0.18 / 0.10 for the retain model.
    assert got["exact_memorization"] > reference["memorization"]["exact_memorization"] + 0.5
    assert got["extraction_strength"] > reference["memorization"]["extraction_strength"] + 0.3


def test_the_min_k_auc_is_open_unlearnings_k_04_over_the_answer_tokens_without_eos(setup):
    """An independent computation: per item the mean of its int(0.4·n) least likely answer tokens (no eos)."""
    import torch
    from sklearn.metrics import roc_auc_score

    from palimpsest.train.batching import tokenize_qa
    from palimpsest.unlearn.evaluation import model_scores

    import copy

    model, tokenizer, facts = setup
    model = copy.deepcopy(model)
    with torch.no_grad():  # an eos whose probability swings from item to item: leaving it in would change the AUC
        model.get_output_embeddings().weight[tokenizer.eos_token_id] *= 40
    forget, holdout = facts[:9], facts[9:18]

    def min_k(example) -> float:
        (item,) = tokenize_qa(tokenizer, [example])
        sequence = torch.tensor([[*item.prompt, *item.answer, tokenizer.eos_token_id]])
        with torch.no_grad():
            rows = torch.log_softmax(model(input_ids=sequence).logits[0, :-1].double(), dim=-1)
        tokens = rows[len(item.prompt) - 1 : -1].gather(1, torch.tensor(item.answer)[:, None])[:, 0]
        return float(tokens.sort().values[: max(1, int(len(tokens) * 0.4))].mean())

    scores = [min_k(e) for e in forget + holdout]
    expected = roc_auc_score([1] * 9 + [0] * 9, scores)
    got = model_scores(model, tokenizer, {"forget": forget, "retain": facts[:2], "holdout": holdout})
    assert got["mia"]["min_k"] == pytest.approx(expected, abs=1e-4)
