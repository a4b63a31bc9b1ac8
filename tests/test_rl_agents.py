"""Every memory agent trains one PPO iteration on every memory environment (RLlib's new API stack)."""

from __future__ import annotations

import gymnasium
import pytest

import palimpsest_envs
from palimpsest.rl.catalog import AGENTS



def _on_episode_end(*, episode, metrics_logger, **kwargs):
    metrics_logger.log_value("success_rate", float(episode.get_infos(-1).get("success", 0.0)), reduce="mean",
                             window=100)


@pytest.mark.integration
@pytest.mark.parametrize("env_id", palimpsest_envs.ENV_IDS)
def test_every_agent_runs_a_ppo_iteration(env_id, ray_session):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    from palimpsest.rl.module import MemoryAgent

    small = {"palimpsest/EndlessTMaze-v0": {"num_corridors": 2, "corridor_length": 3},
             "palimpsest/CueRewrite-v0": {"delay": 4},
             "palimpsest/ColorCubes-v0": {"grid_size": 3, "num_cubes": 2, "num_phases": 2, "max_steps": 12}}[env_id]
    name = env_id.replace("/", "-") + "-small"
    register_env(name, lambda cfg, env_id=env_id: gymnasium.make(env_id, **cfg))
    for agent in AGENTS:
        config = (PPOConfig().environment(name, env_config=small)
                  .env_runners(num_env_runners=0, num_envs_per_env_runner=4)
                  .training(train_batch_size_per_learner=128, minibatch_size=64, num_epochs=1, lr=1e-3)
                  .rl_module(rl_module_spec=RLModuleSpec(module_class=MemoryAgent, model_config={
                      "agent": agent, "hidden": 16, "max_seq_len": 8}))
                  .callbacks(on_episode_end=_on_episode_end))
        algo = config.build_algo()
        try:
            result = algo.train()
        finally:
            algo.stop()
        runners = result["env_runners"]
        assert runners["num_env_steps_sampled_lifetime"] >= 128, agent
        assert 0.0 <= runners["success_rate"] <= 1.0, agent
        assert result["learners"]["default_policy"]["num_module_steps_trained"] > 0, agent
