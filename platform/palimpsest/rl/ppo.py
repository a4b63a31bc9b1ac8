"""One trial's PPO on RLlib's new API stack: the config, the memory agent, greedy evaluation.

A trial is a plain dict (it travels to a Ray Tune worker): agent, hidden, memory, env id and
parameters, seed, and the PPO settings of the job (`ppo_settings`).
"""

from __future__ import annotations

import gymnasium
import numpy as np

import palimpsest_envs  # noqa: F401 - registers palimpsest/<Name>-v0

# RLlib's hyperparameter names for the job's `ppo` section (ours → theirs).
TRAINING_KEYS = {"lr": "lr", "gamma": "gamma", "lambda_": "lambda_", "clip_param": "clip_param",
                 "entropy_coeff": "entropy_coeff", "vf_loss_coeff": "vf_loss_coeff", "grad_clip": "grad_clip",
                 "num_epochs": "num_epochs", "minibatch_size": "minibatch_size",
                 "train_batch_size": "train_batch_size_per_learner"}


# RLlib seeds env runner w with (seed + w) and its vector env seeds sub-env i with (seed + w + i):
# trials with neighbouring seeds, and neighbouring runners of one trial, would replay the same
# episodes. Trials are spread by SEED_STRIDE (more than any runner count + envs per runner), and
# `_RunnerSeeds` mixes the runner's index into each sub-env's seed.
SEED_STRIDE = 10_007


def rllib_seed(trial_seed: int) -> int:
    return trial_seed * SEED_STRIDE


class _RunnerSeeds(gymnasium.Wrapper):
    """reset(seed=k) on env runner w seeds the env with a hash of (k, w): distinct streams for every
    (runner, sub-env) pair of every trial."""

    def __init__(self, env, worker_index: int):
        super().__init__(env)
        self.worker_index = int(worker_index)

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            seed = int(np.random.SeedSequence([int(seed), self.worker_index]).generate_state(1)[0])
        return self.env.reset(seed=seed, options=options)


def _make_env(env_id: str):
    def make(env_config):
        return _RunnerSeeds(gymnasium.make(env_id, **dict(env_config)), getattr(env_config, "worker_index", 0))

    return make


def evaluation_seeds(trial_seed: int) -> tuple[int, int]:
    """(evaluation, test) seeds of a trial: sub-env i of an evaluation plays seed + i. Drawn from the trial
    seed with distinct tags, far apart (32-bit), so trials and the two sets do not share episodes."""
    evaluation, test = (int(np.random.SeedSequence([trial_seed, tag]).generate_state(1)[0]) for tag in (1, 2))
    return evaluation, test


def _on_episode_end(*, episode, metrics_logger, **kwargs):
    """Every finished training episode's `info["success"]` (0 when missing) as a rolling mean."""
    metrics_logger.log_value("success_rate", float(episode.get_infos(-1).get("success", 0.0)), reduce="mean",
                             window=100)


def build_config(trial: dict):
    """The PPOConfig of one trial (the agent is `MemoryAgent` with the trial's width and cell)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    from palimpsest.rl.module import MemoryAgent

    ppo = trial["ppo"]
    register_env(trial["env_id"], _make_env(trial["env_id"]))
    return (PPOConfig()
            .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
            .environment(trial["env_id"], env_config=dict(trial["env_params"]))
            .env_runners(num_env_runners=ppo["num_env_runners"], num_envs_per_env_runner=ppo["num_envs_per_env_runner"],
                         rollout_fragment_length="auto")
            .learners(num_learners=0)
            .training(**{theirs: ppo[ours] for ours, theirs in TRAINING_KEYS.items()})
            .rl_module(rl_module_spec=RLModuleSpec(module_class=MemoryAgent, model_config={
                "agent": trial["agent"], "hidden": trial["hidden"], "max_seq_len": trial["max_seq_len"],
                "memory": dict(trial["memory"])}))
            .callbacks(on_episode_end=_on_episode_end)
            .debugging(seed=rllib_seed(trial["seed"]), log_level="WARN")
            .reporting(metrics_num_episodes_for_smoothing=100))


EVALUATION_BATCH = 1024  # episodes stepped side by side: bounds the memory one evaluation takes


def greedy_evaluation(module, env_id: str, env_params: dict, *, episodes: int, seed: int,
                      max_steps: int | None = None) -> dict:
    """Success rate and mean return of the greedy (argmax) policy over `episodes` episodes.

    The episodes run side by side in the env's batched twin (EVALUATION_BATCH at a time),
    episode i seeded `seed + i` (it replays the single env seeded so), each from the module's
    initial state; an episode counts from its first step to its end, and what the twin does
    after it (it restarts the sub-env) is ignored.
    """
    parts = [_greedy_batch(module, env_id, env_params, episodes=min(EVALUATION_BATCH, episodes - start),
                           seed=seed + start, max_steps=max_steps) for start in range(0, episodes, EVALUATION_BATCH)]
    weights = [p["episodes"] for p in parts]
    return {"success_rate": float(np.average([p["success_rate"] for p in parts], weights=weights)),
            "mean_return": float(np.average([p["mean_return"] for p in parts], weights=weights)),
            "mean_length": float(np.average([p["mean_length"] for p in parts], weights=weights)),
            "episodes": episodes}


def _greedy_batch(module, env_id: str, env_params: dict, *, episodes: int, seed: int, max_steps: int | None) -> dict:
    import torch
    from ray.rllib.core.columns import Columns

    envs = gymnasium.make_vec(env_id, num_envs=episodes, vectorization_mode="vector_entry_point", **env_params)
    try:
        obs, _ = envs.reset(seed=seed)
        state = {k: torch.as_tensor(np.repeat(v[None], episodes, axis=0)) for k, v in
                 module.get_initial_state().items()}
        done = np.zeros(episodes, dtype=bool)
        returns = np.zeros(episodes)
        success = np.zeros(episodes)
        lengths = np.zeros(episodes, dtype=np.int64)
        limit = max_steps or envs.spec.max_episode_steps or 100_000
        for _ in range(limit):
            with torch.no_grad():
                out = module.forward_inference({Columns.OBS: torch.as_tensor(obs, dtype=torch.float32)[:, None],
                                                Columns.STATE_IN: state})
            actions = out[Columns.ACTION_DIST_INPUTS][:, 0].argmax(-1).numpy()
            state = out[Columns.STATE_OUT]
            obs, rewards, terminated, truncated, infos = envs.step(actions)
            live = ~done
            returns[live] += rewards[live]
            lengths[live] += 1
            ended = live & (terminated | truncated)
            if "success" in infos:
                success[ended] = np.asarray(infos["success"])[ended]
            done |= ended
            if done.all():
                break
        if not done.all():
            raise RuntimeError(f"{env_id}: {int((~done).sum())} evaluation episodes did not end in {limit} steps")
        return {"success_rate": float(success.mean()), "mean_return": float(returns.mean()),
                "mean_length": float(lengths.mean()), "episodes": episodes}
    finally:
        envs.close()
