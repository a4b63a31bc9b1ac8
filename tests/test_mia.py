"""Membership-inference attacks: each score against a hand computation, orientation, AUC, TPR at low FPR."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from palimpsest.metrics.mia import attack_scores, membership_inference, plot_mia, token_log_probs, token_statistics
from synthetic import EOS, PAD, qa_items, tiny_model

# Ten tokens whose two lowest (-4.0, -3.0) are neither the first two, nor the last two, nor near the mean.
TEN = np.array([-0.1, -3.0, -0.2, -2.0, -0.5, -1.0, -0.3, -4.0, -0.4, -0.6])


def _min_k(log_probs, k):
    return float(attack_scores([np.asarray(log_probs, dtype=float)], ["x"], k=k)["min_k"][0])


def test_min_k_averages_the_lowest_k_fraction_of_tokens():
    got = _min_k(TEN, 0.2)
    assert got == pytest.approx(-3.5)
    assert got != pytest.approx(np.sort(TEN)[-2:].mean())  # highest tokens: -0.15
    assert got != pytest.approx(TEN[:2].mean())  # first tokens: -1.55
    assert got != pytest.approx(TEN.mean())  # all tokens: -1.21
    assert _min_k(TEN, 1.0) == pytest.approx(TEN.mean())


def test_min_k_keeps_int_len_times_k_tokens_and_at_least_one():
    assert _min_k(TEN, 0.25) == pytest.approx(-3.5)  # int(2.5) = 2 tokens, not 3 (-3.0)
    assert _min_k([-1.0, -4.0, -2.0], 0.2) == pytest.approx(-4.0)  # int(0.6) = 0, so one token
    assert _min_k([-1.0, -4.0, -2.0, -3.0], 0.5) == pytest.approx(-3.5)


def test_loss_score_is_minus_the_mean_token_nll():
    log_probs = [np.array([-0.5, -1.5, -4.0]), np.array([-0.2])]
    assert attack_scores(log_probs, ["a", "b"])["loss"] == pytest.approx([-2.0, -0.2])


def test_zlib_score_is_minus_mean_nll_over_zlib_entropy_in_bytes():
    text = "The capital of France is Paris, and Paris is in France."
    log_probs = np.array([-0.5, -1.5, -4.0, -2.0])
    entropy = len(zlib.compress(text.encode("utf-8")))
    got = attack_scores([log_probs], [text])["zlib"][0]
    assert got == pytest.approx(-2.0 / entropy)
    assert entropy != len(text)  # bytes compressed, not characters


def test_zlib_entropy_counts_utf8_bytes():
    text = "Zürich ist größer als Genf"
    got = attack_scores([np.array([-1.0])], [text])["zlib"][0]
    assert got == pytest.approx(-1.0 / len(zlib.compress(text.encode("utf-8"))))


def _sides(rng, n, member_shift):
    members = [rng.normal(-1.0 + member_shift, 0.3, size=rng.integers(1, 8)) for _ in range(n)]
    non_members = [rng.normal(-1.0, 0.3, size=rng.integers(1, 8)) for _ in range(n)]
    return members, ["an answer"] * n, non_members, ["an answer"] * n


def test_members_with_higher_log_probs_are_found_perfectly():
    members, m_texts, non, n_texts = _sides(np.random.default_rng(0), 50, member_shift=5.0)
    result = membership_inference(members, m_texts, non, n_texts)
    for attack in ("loss", "zlib", "min_k"):
        assert result["attacks"][attack] == {"auc": 1.0, "tpr_at_1pct_fpr": 1.0}
    assert (result["members"], result["non_members"], result["k"]) == (50, 50, 0.2)


def test_identically_distributed_sides_give_chance_auc():
    result = membership_inference(*_sides(np.random.default_rng(1), 300, member_shift=0.0))
    for attack in ("loss", "zlib", "min_k"):
        assert 0.4 <= result["attacks"][attack]["auc"] <= 0.6


def test_swapping_members_and_non_members_gives_one_minus_auc():
    members, m_texts, non, n_texts = _sides(np.random.default_rng(2), 80, member_shift=0.3)
    forward = membership_inference(members, m_texts, non, n_texts)
    swapped = membership_inference(non, n_texts, members, m_texts)
    for attack in ("loss", "zlib", "min_k"):
        assert 0.6 < forward["attacks"][attack]["auc"] < 1.0  # members (more likely tokens) score higher
        assert swapped["attacks"][attack]["auc"] == pytest.approx(1 - forward["attacks"][attack]["auc"], abs=2e-4)


def test_tpr_at_1pct_fpr_is_the_step_function_at_exactly_one_percent():
    # Loss scores: members -0.5, -1.5, -2.5, -3.5; 100 non-members -1, -2, ..., -100. A threshold
    # at -1.5 admits one false positive (FPR = 0.01) and half the members.
    members = [np.array([-x]) for x in (0.5, 1.5, 2.5, 3.5)]
    non = [np.array([-float(x)]) for x in range(1, 101)]
    result = membership_inference(members, ["a"] * 4, non, ["a"] * 100)
    assert result["attacks"]["loss"]["tpr_at_1pct_fpr"] == 0.5  # FPR < 1% strictly would give 0.25


def test_return_scores_gives_per_side_scores_per_attack():
    members, m_texts, non, n_texts = _sides(np.random.default_rng(3), 7, member_shift=1.0)
    result, scores = membership_inference(members[:5], m_texts[:5], non, n_texts, return_scores=True)
    assert result == membership_inference(members[:5], m_texts[:5], non, n_texts)
    assert {side: {a: len(v) for a, v in block.items()} for side, block in scores.items()} == {
        "members": {"loss": 5, "zlib": 5, "min_k": 5}, "non_members": {"loss": 7, "zlib": 7, "min_k": 7}}


def test_token_log_probs_match_log_softmax_at_the_answer_and_eos_tokens():
    model, items = tiny_model(seed=4), qa_items(n=11, seed=5)
    model.train()
    got = token_log_probs(model, items, pad_id=PAD, eos_id=EOS, batch_size=4)  # padded, several batches
    assert model.training
    model.eval()
    with torch.no_grad():
        for item, log_probs in zip(items, got):
            sequence = torch.tensor([[*item.prompt, *item.answer, EOS]])
            logits = model(input_ids=sequence).logits[0, :-1].double()
            every = torch.log_softmax(logits, dim=-1).gather(1, sequence[0, 1:, None])[:, 0]
            expected = every[len(item.prompt) - 1 :].numpy()  # predictions of answer tokens and eos
            assert log_probs.dtype == np.float64 and len(log_probs) == len(item.answer) + 1
            np.testing.assert_allclose(log_probs, expected, atol=1e-5)


def test_token_log_probs_leave_an_eval_model_in_eval():
    model = tiny_model(seed=4)
    model.eval()
    token_log_probs(model, qa_items(n=3), pad_id=PAD, eos_id=EOS)
    assert not model.training


def test_plot_mia_writes_a_png(tmp_path):
    result, scores = membership_inference(*_sides(np.random.default_rng(6), 40, member_shift=0.5),
                                          return_scores=True)
    path = plot_mia(scores, tmp_path / "plots" / "mia.png", title="tiny", result=result)
    assert path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("k", [0.0, -0.1, 1.5])
def test_k_outside_zero_to_one_is_refused(k):
    with pytest.raises(ValueError, match="k must be"):
        attack_scores([np.array([-1.0])], ["a"], k=k)


def test_empty_side_or_empty_sequence_or_mismatched_texts_is_refused():
    one = [np.array([-1.0])]
    with pytest.raises(ValueError, match="members and non-members"):
        membership_inference([], [], one, ["a"])
    with pytest.raises(ValueError, match="members and non-members"):
        membership_inference(one, ["a"], [], [])
    with pytest.raises(ValueError, match="no scored tokens"):
        attack_scores([np.array([])], ["a"])
    with pytest.raises(ValueError, match="differ in length"):
        attack_scores(one, ["a", "b"])


def test_token_statistics_standardise_each_answer_token_against_the_models_own_distribution():
    """Min-K%++ (Zhang et al. 2024, eq. 2) and the argmax hits, at the answer tokens without the closing eos."""
    model, items = tiny_model(seed=4), qa_items(n=7, seed=8)
    got = token_statistics(model, items, pad_id=PAD, eos_id=EOS, batch_size=3)
    reference = token_log_probs(model, items, pad_id=PAD, eos_id=EOS)
    model.eval()
    with torch.no_grad():
        for item, stats, log_probs in zip(items, got, reference):
            sequence = torch.tensor([[*item.prompt, *item.answer, EOS]])
            rows = torch.log_softmax(model(input_ids=sequence).logits[0, :-1].double(), dim=-1)
            rows = rows[len(item.prompt) - 1 : -1]  # predictions of the answer tokens, not of the eos
            truth = torch.tensor(item.answer)
            expected_z = []
            for row, token in zip(rows, truth):
                mean = float((row.exp() * row).sum())
                std = float(((row.exp() * row**2).sum() - mean**2) ** 0.5)
                expected_z.append((float(row[token]) - mean) / std)
            assert len(stats["z"]) == len(item.answer) == len(stats["hits"])
            assert stats["z"] == pytest.approx(expected_z, rel=1e-6)
            assert stats["hits"].tolist() == (rows.argmax(-1) == truth).tolist()
            np.testing.assert_allclose(stats["log_probs"], log_probs, rtol=1e-6)


def test_min_k_plus_plus_averages_the_lowest_z_and_min_k_can_leave_out_the_eos():
    z = TEN * 0.5
    scores = attack_scores([TEN], ["x"], k=0.2, z_scores=[z])
    assert scores["min_k_plus_plus"][0] == pytest.approx(-1.75)  # the two lowest z: -2.0, -1.5
    with_eos = np.r_[TEN, -9.0]  # a closing eos the model finds unlikely
    assert attack_scores([with_eos], ["x"], k=0.2)["min_k"][0] == pytest.approx(-6.5)
    assert attack_scores([with_eos], ["x"], k=0.2, min_k_without_eos=True)["min_k"][0] == pytest.approx(-3.5)
    assert "min_k_plus_plus" not in attack_scores([TEN], ["x"])
    with pytest.raises(ValueError, match="z_scores"):
        attack_scores([TEN], ["x"], z_scores=[])
