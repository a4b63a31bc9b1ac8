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


class _SubEnvSeeds(gymnasium.vector.VectorWrapper):
    """The batched twin's form of `_RunnerSeeds`: RLlib resets runner w's vector env with seed k = base + w, and
    sub-env i is seeded with a hash of (k, i) (the twin alone would seed it k + i, which runner w + 1's sub-env
    i − 1 would replay)."""

    def reset(self, *, seed=None, options=None):
        if isinstance(seed, (int, np.integer)):
            seed = [int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0]) for i in range(self.num_envs)]
        return self.env.reset(seed=seed, options=options)


def trains_on_twin(env_id: str) -> bool:
    """Whether RLlib's env runners step `env_id`'s batched numpy twin (ours: `palimpsest/…` ids) rather than a
    SyncVectorEnv of single envs (any other id)."""
    from palimpsest.rl.envs import vector_mode

    return env_id.startswith("palimpsest/") and vector_mode(env_id) == "vector_entry_point"


def _make_env(env_id: str):
    def make_env(env_config):
        from palimpsest.rl.envs import make

        config = dict(env_config)
        count = config.pop("num_envs", None)
        if count is not None:  # gym_env_vectorize_mode "vector_entry_point": RLlib asks for the whole batch
            return _SubEnvSeeds(gymnasium.make_vec(env_id, num_envs=int(count), vectorization_mode="vector_entry_point",
                                                   **config))
        return _RunnerSeeds(make(env_id, **config), getattr(env_config, "worker_index", 0))

    return make_env


def evaluation_seeds(trial_seed: int, held_out: int = 0) -> tuple[int, ...]:
    """(evaluation, test, held-out 1, …) seeds of a trial: sub-env i of an evaluation plays seed + i. Drawn from
    the trial seed with distinct tags, far apart (32-bit), so trials and the sets do not share episodes."""
    return tuple(int(np.random.SeedSequence([trial_seed, tag]).generate_state(1)[0]) for tag in range(1, 3 + held_out))


def _on_episode_end(*, episode, metrics_logger, **kwargs):
    """Every finished training episode's `info["success"]` as a rolling mean (envs that report one)."""
    info = episode.get_infos(-1)
    if "success" in info:
        metrics_logger.log_value("success_rate", float(info["success"]), reduce="mean", window=100)


def trial_bundles(trial: dict) -> list[dict[str, float]]:
    """The Ray resource bundles one trial holds: RLlib's own request for its PPOConfig (the trial process with
    its learner, then one bundle per env runner), what Tune reserves for it."""
    import logging

    from ray.rllib.algorithms.ppo import PPO

    quiet = logging.getLogger("ray.rllib.algorithms.algorithm_config")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "You are running PPO on the new API stack!": we chose it
    try:
        factory = PPO.default_resource_request(build_config(trial, here=False))
    finally:
        quiet.setLevel(level)
    return [{name: float(amount) for name, amount in bundle.items() if amount} for bundle in factory.bundles]


def learner_gpus(ppo: dict, *, here: bool = True) -> float:
    """GPUs the trial's learner trains on. `here`: in the trial's own process, where a GPU Ray gave it but torch
    cannot see (a node that declares GPUs without CUDA, or a CPU build of torch) leaves the learner on the CPU,
    with a warning, rather than failing the trial; Tune still reserves the GPU."""
    gpus = float(ppo.get("num_gpus_per_learner", 0.0))
    if gpus and here:
        import torch

        if not torch.cuda.is_available():
            from palimpsest import progress as ui

            ui.warn(f"this trial holds {gpus:g} GPU but torch sees no CUDA device on this node "
                    "(a CPU build of torch, or a node that declares GPUs it lacks): its learner runs on the CPU")
            return 0.0
    return gpus


def build_config(trial: dict, *, here: bool = True):
    """The PPOConfig of one trial (the agent is `MemoryAgent` with the trial's width and cell); `here`: for the
    trial's own process (else for sizing its resources, wherever that runs)."""
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
                         num_cpus_per_env_runner=ppo.get("num_cpus_per_env_runner", 1.0),
                         rollout_fragment_length="auto",
                         # the batched numpy twin where the env has one (RLlib's default, "sync", steps single envs)
                         gym_env_vectorize_mode=trial.get("vectorize") or (
                             "vector_entry_point" if trains_on_twin(trial["env_id"]) else "sync"))
            .learners(num_learners=0, num_gpus_per_learner=learner_gpus(ppo, here=here))
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
    """Success rate and mean return of the greedy (argmax) policy over `episodes` episodes (the success rate is
    None for an env that reports no `info["success"]`, e.g. CartPole: its score is the return).

    The episodes run side by side in the env's batched twin (EVALUATION_BATCH at a time),
    episode i seeded `seed + i` (it replays the single env seeded so), each from the module's
    initial state; an episode counts from its first step to its end, and what the twin does
    after it (it restarts the sub-env) is ignored. Envs whose episodes are a chain of stages
    (EndlessTMaze's corridors, ColorCubes' phases: `info["stages_passed"]` and `info["stages"]`)
    also give `first_stage` (the share of episodes that pass stage 1: retention of one cue)
    and `later_stages` (of the later stages reached, the share passed: rewriting), else None.
    """
    parts = [_greedy_batch(module, env_id, env_params, episodes=min(EVALUATION_BATCH, episodes - start),
                           seed=seed + start, max_steps=max_steps) for start in range(0, episodes, EVALUATION_BATCH)]
    weights = [p["episodes"] for p in parts]
    rates = [p["success_rate"] for p in parts]
    scores = {"success_rate": None if None in rates else float(np.average(rates, weights=weights)),
              "mean_return": float(np.average([p["mean_return"] for p in parts], weights=weights)),
              "mean_length": float(np.average([p["mean_length"] for p in parts], weights=weights)),
              "episodes": episodes, "first_stage": None, "later_stages": None}
    if all(p["stages"] is not None for p in parts):
        passed, stages = np.concatenate([p["stages"][0] for p in parts]), np.concatenate([p["stages"][1] for p in parts])
        scores.update(stage_scores(passed, stages))
    return scores


def score(scores: dict) -> float:
    """What selects a module: the success rate, or the mean return where the env reports no success."""
    return scores["mean_return"] if scores["success_rate"] is None else scores["success_rate"]


def stage_scores(passed: np.ndarray, stages: np.ndarray) -> dict:
    """`first_stage`: share of episodes past stage 1; `later_stages`: stages 2.. passed over stages 2.. reached
    (an episode that passed p of n stages reached min(p + 1, n) of them), None when none was reached."""
    first = float(np.mean(passed >= 1))
    reached = np.minimum(passed + 1, stages) - 1  # stages after the first that the episode stood in
    later_passed = np.maximum(passed - 1, 0)
    reached_later = int(reached[passed >= 1].sum())
    return {"first_stage": first,
            "later_stages": float(later_passed.sum() / reached_later) if reached_later else None}


def _greedy_batch(module, env_id: str, env_params: dict, *, episodes: int, seed: int, max_steps: int | None) -> dict:
    import torch
    from ray.rllib.core.columns import Columns

    from palimpsest.rl.envs import make_vec, max_episode_steps

    envs = make_vec(env_id, episodes, **env_params)
    try:
        obs, _ = envs.reset(seed=seed)
        state = {k: torch.as_tensor(np.repeat(v[None], episodes, axis=0)) for k, v in
                 module.get_initial_state().items()}
        done = np.zeros(episodes, dtype=bool)
        returns = np.zeros(episodes)
        success = np.full(episodes, np.nan)  # NaN: the env reports no success (e.g. CartPole)
        passed = np.full(episodes, -1, dtype=np.int64)  # stages passed (-1: the env reports none)
        stages = np.zeros(episodes, dtype=np.int64)
        lengths = np.zeros(episodes, dtype=np.int64)
        limit = max_steps or max_episode_steps(env_id) or 100_000
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
                reported = ended & np.asarray(infos.get("_success", ended))
                success[reported] = np.asarray(infos["success"])[reported]
            if "stages_passed" in infos:
                passed[ended] = np.asarray(infos["stages_passed"])[ended]
                stages[ended] = np.asarray(infos["stages"])[ended]
            done |= ended
            if done.all():
                break
        if not done.all():
            raise RuntimeError(f"{env_id}: {int((~done).sum())} evaluation episodes did not end in {limit} steps")
        return {"success_rate": None if np.isnan(success).any() else float(success.mean()), "mean_return": float(returns.mean()),
                "mean_length": float(lengths.mean()), "episodes": episodes,
                "stages": (passed, stages) if (passed >= 0).all() else None}
    finally:
        envs.close()
