"""Environment throughput, measured side by side: each batched numpy twin against the single Gymnasium env.

`palimpsest envs --throughput` prints it. Steps/s counts environment steps (a batch of N
sub-envs stepping once is N steps), random actions. A batch is timed in its steady state:
after every sub-env has finished more episodes than one block of pre-drawn plans holds, so
the clock pays for redrawing plans as a long run does (`vector_steady`). The single env
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


STEADY_EPISODES = 65  # episodes every sub-env finishes before the clock starts: past its first block of plans
WARMUP_LIMIT = 100_000  # batch steps at most spent warming up (an env whose episodes hardly end)


def vector_steady(env_id: str, num_envs: int, steps: int, params: dict | None = None, *, seed: int = 0,
                  vectorization_mode: str = "vector_entry_point", warmup_episodes: int = STEADY_EPISODES) -> dict:
    """Steady-state steps/s of `num_envs` sub-envs over `steps` batch steps, and what the clock saw.

    Before the clock starts, random steps run until every sub-env has finished `warmup_episodes`
    episodes (by default one more than a block of pre-drawn episode plans, `_plans.EPISODES_PER_DRAW`,
    so every sub-env has redrawn its plans at least once: a short timing that starts fresh would
    never pay for a redraw). Returns `rate` (steps/s), `warmup_steps` (batch steps before the clock)
    and `episodes_per_env` (episodes each sub-env finished, on average, while the clock ran).
    `vectorization_mode="sync"` steps `num_envs` single envs through Gymnasium's SyncVectorEnv instead
    (how a user batches an env without a batched twin, e.g. POPGym's).
    """
    envs = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode, **(params or {}))
    try:
        envs.reset(seed=seed)
        discrete = isinstance(envs.single_action_space, gymnasium.spaces.Discrete)
        space = envs.single_action_space if discrete else envs.action_space

        def draw(count: int, offset: int):
            return random_actions(space, count, seed + offset, batch=num_envs if discrete else None)

        finished = np.zeros(num_envs, dtype=np.int64)
        warmup = 0
        while finished.min() < warmup_episodes and warmup < WARMUP_LIMIT:
            for batch in draw(256, warmup + 1):
                _, _, terminated, truncated, _ = envs.step(batch)
                finished += np.asarray(terminated) | np.asarray(truncated)
            warmup += 256
        actions = draw(steps, warmup + 1)
        ended = np.zeros(num_envs, dtype=np.int64)
        started = time.perf_counter()
        for batch in actions:
            _, _, terminated, truncated, _ = envs.step(batch)
            ended += terminated
            ended += truncated
        elapsed = time.perf_counter() - started
        return {"rate": num_envs * steps / elapsed, "warmup_steps": warmup,
                "episodes_per_env": float(ended.sum() / num_envs)}
    finally:
        envs.close()


def vector_rate(env_id: str, num_envs: int, steps: int, params: dict | None = None, *, seed: int = 0,
                vectorization_mode: str = "vector_entry_point", warmup_episodes: int = STEADY_EPISODES) -> float:
    """Steady-state steps/s of `num_envs` sub-envs over `steps` batch steps (`vector_steady`)."""
    return vector_steady(env_id, num_envs, steps, params, seed=seed, vectorization_mode=vectorization_mode,
                         warmup_episodes=warmup_episodes)["rate"]


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


def throughput(batches=(1024, 8192), batch_steps: int = 1000, single_steps: int = 20_000) -> list[dict]:
    """One row per environment: the single env's steps/s and each batch size's steady state (with, under
    `("episodes", n)`, the episodes each sub-env finished while the clock ran)."""
    rows = []
    for env_id in palimpsest_envs.ENV_IDS:
        single = single_rate(env_id, single_steps)
        row = {"env": env_id, "single": single}
        for n in batches:
            steady = vector_steady(env_id, n, batch_steps)
            row[n], row[("episodes", n)] = steady["rate"], steady["episodes_per_env"]
        rows.append(row)
    return rows
