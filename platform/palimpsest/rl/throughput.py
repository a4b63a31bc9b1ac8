"""Environment throughput, measured side by side: each batched numpy twin against the single Gymnasium env.

`palimpsest envs --throughput` prints it. Steps/s counts environment steps (a batch of N
sub-envs stepping once is N steps), random actions, after a warm-up step; the single env
resets itself when an episode ends, as a user's loop would. Figures from one process on
one core: pin it (`taskset -c 0`) for the one-core figure.
"""

from __future__ import annotations

import time

import gymnasium
import numpy as np

import palimpsest_envs


def random_actions(space: gymnasium.Space, count: int, seed: int, batch: int | None = None):
    """`count` random actions of `space`, drawn before the clock starts (indexable, one per step).

    A Discrete space draws from `numpy.random.default_rng(seed)`: Python ints, or rows of `batch`
    actions (one per sub-env) when `batch` is given. Any other space (e.g. POPGym's MultiDiscrete
    actions, or a vector env's batched `action_space`) is seeded with `seed` and sampled.
    """
    if isinstance(space, gymnasium.spaces.Discrete):
        draws = int(space.start) + np.random.default_rng(seed).integers(
            0, space.n, size=(count,) if batch is None else (count, batch))
        return draws.tolist() if batch is None else draws
    space.seed(seed)
    return [space.sample() for _ in range(count)]


def vector_rate(env_id: str, num_envs: int, steps: int, params: dict | None = None, *, seed: int = 0,
                vectorization_mode: str = "vector_entry_point") -> float:
    """Steps/s of the batched twin at `num_envs` sub-envs over `steps` batch steps.

    `vectorization_mode="sync"` steps `num_envs` single envs through Gymnasium's SyncVectorEnv instead
    (how a user batches an env without a batched twin, e.g. POPGym's).
    """
    envs = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode, **(params or {}))
    try:
        envs.reset(seed=seed)
        if isinstance(envs.single_action_space, gymnasium.spaces.Discrete):
            actions = random_actions(envs.single_action_space, steps + 1, seed, batch=num_envs)
        else:
            actions = random_actions(envs.action_space, steps + 1, seed)
        envs.step(actions[0])
        started = time.perf_counter()
        for batch in actions[1:]:
            envs.step(batch)
        return num_envs * steps / (time.perf_counter() - started)
    finally:
        envs.close()


def single_rate(env_id: str, steps: int, params: dict | None = None, *, seed: int = 0) -> float:
    """Steps/s of one Gymnasium env (`gymnasium.make`, its wrappers included) over `steps` steps."""
    env = gymnasium.make(env_id, **(params or {}))
    env.reset(seed=seed)
    actions = random_actions(env.action_space, steps, seed)
    started = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - started)
    env.close()
    return rate


def throughput(batches=(1024, 8192), batch_steps: int = 200, single_steps: int = 20_000) -> list[dict]:
    """One row per environment: the single env's steps/s and each batch size's, with the ratio between them."""
    rows = []
    for env_id in palimpsest_envs.ENV_IDS:
        single = single_rate(env_id, single_steps)
        row = {"env": env_id, "single": single}
        for n in batches:
            row[n] = vector_rate(env_id, n, batch_steps)
        rows.append(row)
    return rows
