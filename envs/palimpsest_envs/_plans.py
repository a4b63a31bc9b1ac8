"""Episode plans: the one place where the environments draw randomness.

Each environment decides everything random about an episode (cues, corridor
lengths, rewrite times) at reset, as a *plan*: a dict of numpy arrays. A plan is a
pure function of ``uniforms(config)`` uniform numbers in [0, 1): each environment
has one module-level ``draw(u, config)`` turning a ``(n_episodes, uniforms)``
array of them into ``n_episodes`` plans, and a generator supplies the numbers in
blocks of ``EPISODES_PER_DRAW`` episodes (``rng.random((EPISODES_PER_DRAW, U))``).

Why blocks, and why uniforms: the batched twins keep one generator per
sub-environment so that sub-env ``i`` of ``reset(seed=s)`` replays the single
environment seeded with ``s + i``. Drawing one episode at a time would force a
Python loop over every sub-env that autoresets, on every step; drawing a block
makes that loop run once per ``EPISODES_PER_DRAW`` episodes of a sub-env, and
since the loop only pulls raw numbers from each generator (one call), turning
them into plans is one vectorised ``draw`` over every sub-env that needed a
block. The single environment consumes its generator in exactly the same blocks,
so both see the same stream of episodes.

What the environments share around their plans lives here too: `config_signature` (an
env's arguments are its `make_config`'s), `PlannedEnv` (single) and `PlannedVectorEnv`
(batched).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import logger, spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

EPISODES_PER_DRAW = 64

Plan = dict[str, np.ndarray]
DrawFn = Callable[[np.ndarray, Any], Plan]  # (n_episodes, uniforms) numbers in [0, 1), config → plans
UniformsFn = Callable[[Any], int]  # config → uniform numbers per episode


def config_signature(make_config: Callable, *, batched: bool = False) -> inspect.Signature:
    """The signature of an env's `__init__(self, [num_envs,] *arguments, render_mode=None, **keywords)`.

    An env's arguments are listed once, in its module's `make_config` (their defaults in
    `DEFAULTS`); the single env and its batched twin pass theirs on to it and carry this
    signature as `__init__.__signature__`, so `inspect.signature`, `palimpsest envs` and
    `gymnasium.make(id, **kwargs)` users see the arguments themselves.
    """
    own = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if batched:
        own.append(inspect.Parameter("num_envs", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=1, annotation="int"))
    render_mode = inspect.Parameter("render_mode", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation="str | None")
    return inspect.Signature([*own, *inspect.signature(make_config).parameters.values(), render_mode])


def _configure(env: Any, make_config: Callable, arguments: tuple, keywords: dict, render_mode: str | None) -> Any:
    """`make_config(*arguments, **keywords)`, after refusing any render mode (first: the same error whatever the
    arguments)."""
    if render_mode is not None:
        raise ValueError(f"{type(env).__name__} has no render modes")
    env.render_mode = render_mode
    env.config = make_config(*arguments, **keywords)
    return env.config


def scaled(u: np.ndarray, low: int, count: int) -> np.ndarray:
    """Integers uniform over ``low .. low + count - 1`` from uniforms in [0, 1) (``low + floor(u * count)``)."""
    return low + np.minimum((u * count).astype(np.int64), count - 1)


class PlanQueue:
    """Per-episode plans for one environment, refilled a block at a time.

    The queue remembers which generator drew its block: a new generator (from
    ``reset(seed=...)`` or an assignment to ``env.np_random``) discards the rest
    of the block, so reseeding behaves as if plans were drawn per episode.
    """

    def __init__(self, draw: DrawFn, uniforms: int, config: Any):
        self._draw = draw
        self._uniforms = uniforms
        self._config = config
        self._block: Plan | None = None
        self._block_rng: np.random.Generator | None = None
        self._next = EPISODES_PER_DRAW

    def next(self, rng: np.random.Generator) -> Plan:
        if self._block_rng is not rng or self._next >= EPISODES_PER_DRAW:
            self._block = self._draw(rng.random((EPISODES_PER_DRAW, self._uniforms)), self._config)
            self._block_rng = rng
            self._next = 0
        assert self._block is not None
        row = {k: v[self._next] for k, v in self._block.items()}
        self._next += 1
        return row


class PlannedEnv(gym.Env[np.ndarray, np.int64]):
    """What the single environments share: arguments, spaces, plans, and the end of a step with stages.

    Subclasses call `_setup` from `__init__` and define `_obs()`; those with stages and a step
    budget (`config.max_steps`) end each step with `_end_step`.
    """

    metadata = {"render_modes": []}

    def _setup(self, make_config: Callable, draw: DrawFn, uniforms: UniformsFn, arguments: tuple, keywords: dict,
               render_mode: str | None) -> Any:
        """The config of `arguments`/`keywords` (`make_config`'s), its spaces (`config.num_actions` actions,
        `config.obs_dim` floats in [0, 1]) and its plans; returns the config."""
        config = _configure(self, make_config, arguments, keywords, render_mode)
        self.action_space = spaces.Discrete(config.num_actions)
        self.observation_space = spaces.Box(0.0, 1.0, (config.obs_dim,), np.float32)
        self._plans = PlanQueue(draw, uniforms(config), config)
        self._steps = 0
        self._ended: tuple[bool, bool] | None = None  # (terminated, truncated) once over
        return config

    def _after_end(self):
        """The step's return once the episode is over, or None. As CartPole: stepping a finished episode is
        undefined; keep it inert."""
        if self._ended is None:
            return None
        logger.warn("step() called after the episode ended; call reset() first.")
        return self._obs(), 0.0, *self._ended, {}

    def _end_step(self, reward: float, terminated: bool, stages_passed: int, stages: int):
        """The step's return after its rules ran: one more step counted against `config.max_steps` (truncation),
        and on the episode's end `info["success"]` (every stage passed), `stages_passed` and `stages`."""
        self._steps += 1
        truncated = not terminated and self._steps >= self.config.max_steps
        info: dict[str, Any] = {}
        if terminated or truncated:
            self._ended = (terminated, truncated)
            info["success"] = float(stages_passed == stages)
            info["stages_passed"], info["stages"] = stages_passed, stages
        return self._obs(), reward, terminated, truncated, info


class BatchedPlans:
    """One ``PlanQueue`` per sub-environment, stored as ``(num_envs, block, ...)`` arrays."""

    def __init__(self, draw: DrawFn, uniforms: int, config: Any, num_envs: int):
        self._draw = draw
        self._uniforms = uniforms
        self._config = config
        self.num_envs = num_envs
        self.rngs: list[np.random.Generator | None] = [None] * num_envs
        self._blocks: Plan | None = None
        self._next = np.full(num_envs, EPISODES_PER_DRAW, dtype=np.int64)

    def seed(self, seed: int | Sequence[int | None] | None) -> None:
        """Seed sub-env ``i`` as ``Env.reset(seed=seed + i)`` seeds a single env.

        ``None`` keeps existing generators (fresh entropy for any not yet made), as
        ``Env.reset(seed=None)`` does; a sequence gives each sub-env its own seed.
        """
        if seed is None:
            seeds: Sequence[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds, got {len(seeds)}")
        for i, s in enumerate(seeds):
            if s is not None or self.rngs[i] is None:
                self.rngs[i], _ = seeding.np_random(s)
                # A new generator invalidates the rest of the old block (see PlanQueue).
                self._next[i] = EPISODES_PER_DRAW

    def take(self, env_ids: np.ndarray) -> Plan:
        """Next plan of each listed sub-env, as arrays with a leading ``len(env_ids)`` axis."""
        exhausted = env_ids[self._next[env_ids] >= EPISODES_PER_DRAW]
        if exhausted.size:
            # One call per generator for its raw numbers, then one vectorised draw for all of them.
            numbers = np.empty((exhausted.size, EPISODES_PER_DRAW, self._uniforms))
            for row, i in enumerate(exhausted):
                rng = self.rngs[i]
                assert rng is not None, "seed() must run before take()"
                rng.random(out=numbers[row])
            blocks = self._draw(numbers.reshape(-1, self._uniforms), self._config)
            if self._blocks is None:
                self._blocks = {k: np.zeros((self.num_envs, EPISODES_PER_DRAW, *v.shape[1:]), dtype=v.dtype)
                                for k, v in blocks.items()}
            for k, v in blocks.items():
                self._blocks[k][exhausted] = v.reshape(exhausted.size, EPISODES_PER_DRAW, *v.shape[1:])
            self._next[exhausted] = 0
        assert self._blocks is not None or len(env_ids) == 0, "seed() must run before take()"
        if self._blocks is None:
            return {}
        pos = self._next[env_ids]
        self._next[env_ids] += 1
        # One flat index into (num_envs × block) rows: `take` on it costs a fraction of v[env_ids, pos].
        flat = env_ids * EPISODES_PER_DRAW + pos
        return {k: v.reshape(v.shape[0] * v.shape[1], *v.shape[2:]).take(flat, axis=0) for k, v in self._blocks.items()}


class PlannedVectorEnv(VectorEnv):
    """What the batched twins share: reset draws every sub-env's first episode from its own plans.

    Subclasses call `_setup` from `__init__` and define `_start_episodes(env_ids, plan)`
    (the sub-envs' next episodes, `plan` their rows of it) and `_obs()`.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def _setup(self, num_envs: int, make_config: Callable, draw: DrawFn, uniforms: UniformsFn, arguments: tuple,
               keywords: dict, render_mode: str | None) -> tuple[Any, int]:
        """The config of `arguments`/`keywords` (`make_config`'s), and spaces, plans and rows for `num_envs`
        sub-envs of it (`config.num_actions` actions, `config.obs_dim` floats in [0, 1]); returns (config, N)."""
        config = _configure(self, make_config, arguments, keywords, render_mode)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = n = int(num_envs)
        self.single_action_space = spaces.Discrete(config.num_actions)
        self.single_observation_space = spaces.Box(0.0, 1.0, (config.obs_dim,), np.float32)
        self.action_space = batch_space(self.single_action_space, n)
        self.observation_space = batch_space(self.single_observation_space, n)
        self._plans = BatchedPlans(draw, uniforms(config), config, n)
        self._rows = np.arange(n)
        # Sub-envs whose episode ended on the previous step: reset on this one.
        self._pending_reset = np.zeros(n, dtype=bool)
        self._started = False
        return config, n

    def _restart(self, env_ids: np.ndarray) -> None:
        self._start_episodes(env_ids, self._plans.take(env_ids))

    def _end_step(self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, success: np.ndarray,
                  stages_passed: np.ndarray | None = None):
        """The step's return after its rules ran: `info["success"]` (masked by `_success`) for the sub-envs
        whose episode ended, with `stages_passed` and `stages` (corridors, phases: see `STAGES`) when the env
        has stages, and the NEXT_STEP autoreset of those that ended on the previous step (their action was
        ignored through the subclass's `live` mask; their reward and flags stay 0/False)."""
        ended = terminated | truncated
        infos: dict[str, Any] = {}
        if ended.any():
            infos["success"] = np.where(ended, success, False).astype(np.float64)
            infos["_success"] = ended
            if stages_passed is not None:
                infos["stages_passed"] = np.where(ended, stages_passed, 0)
                infos["_stages_passed"] = ended
                infos["stages"] = np.where(ended, self.stages, 0)
                infos["_stages"] = ended
        restarting = np.flatnonzero(self._pending_reset)
        if restarting.size:
            self._restart(restarting)
        self._pending_reset = ended
        return self._obs(), rewards, terminated, truncated, infos

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        if seed is None or isinstance(seed, (int, np.integer)):
            super().reset(seed=seed)
        self._plans.seed(seed)
        self._restart(self._rows)
        self._pending_reset[:] = False
        self._started = True
        return self._obs(), {}
