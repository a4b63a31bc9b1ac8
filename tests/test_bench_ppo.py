"""The ppo bench section: a trial's RLlib PPO on the batched twin against a bare PyTorch loop (same agent, twin, batch,
epochs) and against RLlib on single envs; the bare loop's sequences are RLlib's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from palimpsest.bench import ppo, ppo_loop
from palimpsest.spec.bench import PPOBench


def bench_spec(**overrides) -> SimpleNamespace:
    fields = {"type": "ppo", "env_params": {"num_corridors": 2, "corridor_length": 2}, "agents": ["lstm"],
              "parameters": 3000, "iterations": 2, "repeats": 1, "train_batch_size": 128, "minibatch_size": 64,
              "num_epochs": 1, "max_seq_len": 4, "num_envs": 8, **overrides}
    return SimpleNamespace(name="bench", seed=0, benchmark=PPOBench(**fields))


def test_the_bare_loop_cuts_sequences_at_episode_starts_and_every_max_seq_len_steps():
    """Sub-env 0: an episode of 6 valid steps, a restart step, then 2 steps: sequences of 4 and 2, then 2. Sub-env 1: a
    new episode starts at step 3 (no restart step, e.g. the rollout's first): sequences of 3 and 5 → 3, 4, 1."""
    valid = np.array([[1, 1], [1, 1], [1, 1], [1, 1], [1, 1], [1, 1], [0, 1], [1, 1], [1, 1]], dtype=bool)
    starts = np.zeros_like(valid)
    starts[0, :] = True
    starts[7, 0] = True
    starts[3, 1] = True
    assert ppo_loop._chunks(valid, starts, 4) == [(0, 0, 4), (0, 4, 2), (0, 7, 2), (1, 0, 3), (1, 3, 4), (1, 7, 2)]


def test_without_ray_the_section_says_it_needs_ray(tmp_path):
    (row,) = ppo.measure(bench_spec(), tmp_path, use_ray=False)
    assert row.section == "ppo" and row.value is None and row.note == "needs Ray (run without --no-ray)"


@pytest.mark.slow
def test_the_bare_loop_learns_the_classic_tmaze():
    """The baseline is a PPO that works, not a loop that only burns time: the LSTM solves the T-maze (n = 1)."""
    from palimpsest.rl.ppo import greedy_evaluation

    (trial,) = ppo.trials(bench_spec(env_params={"num_corridors": 1, "corridor_length": 4}, lr=1e-2,
                                     train_batch_size=512, minibatch_size=128, num_epochs=8, max_seq_len=16,
                                     parameters=34000).benchmark)
    result = ppo_loop.train(trial, 40, seed=0)
    scores = greedy_evaluation(result["module"], trial["env_id"], trial["env_params"], episodes=200, seed=99)
    assert scores["success_rate"] >= 0.9, scores


@pytest.mark.integration
def test_four_cases_per_agent_and_the_ratios_of_ours(tmp_path, ray_session):
    rows = ppo.measure(bench_spec(), tmp_path, use_ray=True)
    cases = [row.case for row in rows]
    assert cases == ["lstm ours", "lstm RLlib single envs", "lstm bare PyTorch loop", "lstm former quick settings",
                     "lstm ours, against the former settings"]
    by_case = {row.case: row for row in rows}
    for row in rows:
        assert row.value > 0 and row.unit == "env steps/s"
    ours = by_case["lstm ours"]
    assert ours.baseline == "lstm bare PyTorch loop" and ours.target == ">= 0.5"
    assert ours.ratio == round(ours.value / by_case["lstm bare PyTorch loop"].value, 4)
    again = by_case["lstm ours, against the former settings"]
    assert again.value == ours.value and again.baseline == "lstm former quick settings" and again.target == ">= 10"
    assert "8 envs, batch 512" in by_case["lstm former quick settings"].note
