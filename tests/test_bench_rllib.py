"""The rllib bench section: one row per agent from RLlib's own step counters, each against the mlp's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from palimpsest.bench import rllib
from palimpsest.spec.bench import RLlibBench

ITERATIONS, BATCH, ENVS = 2, 128, 4


def bench_spec(**overrides) -> SimpleNamespace:
    fields = {"type": "rllib", "env_params": {"num_cues": 2, "num_rewrites": 1, "delay": 3},
              "agents": ["mlp", "lstm"], "parameters": 3000, "iterations": ITERATIONS,
              "train_batch_size": BATCH, "num_envs_per_env_runner": ENVS, **overrides}
    return SimpleNamespace(name="bench", seed=0, benchmark=RLlibBench(**fields))


def test_without_ray_the_section_says_it_needs_ray(tmp_path):
    (row,) = rllib.measure(bench_spec(), tmp_path, use_ray=False)
    assert row.section == "rllib" and row.value is None and row.unit == "env steps/s"
    assert row.note == "needs Ray (run without --no-ray)"


def test_the_agents_are_the_trials_a_run_would_build():
    trials = rllib.trials(bench_spec().benchmark)
    assert [t["agent"] for t in trials] == ["mlp", "lstm"]
    for trial in trials:
        assert trial["ppo"]["num_env_runners"] == 0 and trial["ppo"]["train_batch_size"] == BATCH
        assert trial["ppo"]["minibatch_size"] <= BATCH
        assert abs(trial["parameters"] - 3000) < 600  # matched to the budget (rl/sizing.py)


@pytest.mark.integration
def test_one_row_per_agent_counted_by_rllib_against_the_mlp(tmp_path, ray_session):
    rows = rllib.measure(bench_spec(), tmp_path, use_ray=True)
    assert ray_session.is_initialized()  # the caller's session stays up
    assert [row.case for row in rows] == ["mlp", "lstm"]
    by_case = {row.case: row for row in rows}
    for row in rows:
        assert row.section == "rllib" and row.unit == "env steps/s" and row.target is None
        assert row.value > 0
        extra = row.extra
        # With rollout_fragment_length "auto", each iteration samples exactly the train batch
        # (BATCH / ENVS steps in each sub-env): the warm-up's, then the timed ones.
        assert extra["warmup_env_steps"] == BATCH
        assert extra["env_steps"] == (ITERATIONS - 1) * BATCH
        assert extra["lifetime_env_steps"] == ITERATIONS * BATCH
        assert len(extra["iteration_s"]) == ITERATIONS
        assert row.value == pytest.approx(extra["env_steps"] / extra["wall_s"], rel=1e-2)
        assert extra["sampling_share"] is None or 0 < extra["sampling_share"] < 1
    mlp, lstm = by_case["mlp"], by_case["lstm"]
    assert mlp.ratio is None and lstm.baseline == "mlp"
    assert lstm.ratio == round(lstm.value / mlp.value, 4)
