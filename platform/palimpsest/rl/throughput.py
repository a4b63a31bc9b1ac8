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


def vector_rate(env_id: str, num_envs: int, steps: int, params: dict | None = None) -> float:
    """Steps/s of the batched twin at `num_envs` sub-envs over `steps` batch steps."""
    envs = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **(params or {}))
    try:
        envs.reset(seed=0)
        actions = np.random.default_rng(0).integers(0, envs.single_action_space.n, size=(steps + 1, num_envs))
        envs.step(actions[0])
        started = time.perf_counter()
        for batch in actions[1:]:
            envs.step(batch)
        return num_envs * steps / (time.perf_counter() - started)
    finally:
        envs.close()


def single_rate(env_id: str, steps: int, params: dict | None = None) -> float:
    """Steps/s of one Gymnasium env (`gymnasium.make`, its wrappers included) over `steps` steps."""
    env = gymnasium.make(env_id, **(params or {}))
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, env.action_space.n, size=steps)
    started = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(int(action))
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
