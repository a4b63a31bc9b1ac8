"""Cue rewrite: recall the latest of several cues that overwrite each other."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
from gymnasium import logger

from palimpsest_envs._plans import PlannedEnv, config_signature, scaled

NO_CUE = -1

# The arguments' defaults, declared here only: make_config's signature and the RL benchmark's
# default `env_params` read them, and both classes take make_config's arguments
# (_plans.config_signature; tests/test_envs.py checks the signatures).
DEFAULTS = MappingProxyType({"num_cues": 4, "num_rewrites": 1, "delay": 10})


class CueRewriteConfig(NamedTuple):
    """Validated arguments shared by ``CueRewrite`` and its batched twin."""

    num_cues: int
    num_rewrites: int
    delay: int

    @property
    def obs_dim(self) -> int:
        return self.num_cues + 2

    @property
    def num_actions(self) -> int:
        return self.num_cues  # the answer


def make_config(
    num_cues: int = DEFAULTS["num_cues"],
    num_rewrites: int = DEFAULTS["num_rewrites"],
    delay: int = DEFAULTS["delay"],
) -> CueRewriteConfig:
    # A rewrite must change the value, so it needs a second value to change to.
    if not 2 <= num_cues < 2**15:
        raise ValueError(f"num_cues must be in [2, 32767], got {num_cues}")
    if delay < 1:
        raise ValueError(f"delay must be >= 1, got {delay}")
    # Rewrites take distinct steps strictly between the first cue and the query.
    if not 0 <= num_rewrites <= delay - 1:
        raise ValueError(f"num_rewrites must be in [0, delay - 1] = [0, {delay - 1}], got {num_rewrites}")
    return CueRewriteConfig(int(num_cues), int(num_rewrites), int(delay))


def plan_uniforms(cfg: CueRewriteConfig) -> int:
    """Uniform numbers per episode: the first cue, an order of the delay-1 middle steps, one per rewrite."""
    return 1 + (cfg.delay - 1) + cfg.num_rewrites


def draw_plans(u: np.ndarray, cfg: CueRewriteConfig) -> dict[str, np.ndarray]:
    """Cue schedules of ``len(u)`` episodes from their uniform numbers (``_plans.py``).

    ``schedule[t]`` is the cue value shown at step ``t`` (``NO_CUE`` for none; the query
    step ``delay`` never shows one) and ``answer`` the latest value.
    """
    k, r, d = cfg
    n_episodes = len(u)
    schedule = np.full((n_episodes, d + 1), NO_CUE, dtype=np.int16)
    rows = np.arange(n_episodes)
    first = scaled(u[:, 0], 0, k)
    schedule[:, 0] = first
    answer = first
    if r > 0:
        # R distinct steps in 1..d-1: the first R of a random permutation of each row.
        times = np.argsort(u[:, 1:d], axis=1)[:, :r] + 1
        times.sort(axis=1)
        # Each rewrite moves the value by 1..k-1 (mod k): always a different value.
        values = (first[:, None] + np.cumsum(scaled(u[:, d:], 1, k - 1), axis=1)) % k
        schedule[rows[:, None], times] = values
        answer = values[:, -1]
    return {"schedule": schedule, "answer": answer.astype(np.int16)}


class CueRewrite(PlannedEnv):
    """
    ## Description

    A minimal memory-rewriting probe. At step 0 one of `num_cues` cue values is shown;
    `num_rewrites` later steps, chosen at random among the `delay - 1` steps that follow,
    each show a new value (always different from the current one) that replaces it; the
    other steps show nothing. At step `delay` a query flag is shown and the agent must
    answer with the *latest* value. Remembering the first cue is not enough: with one
    rewrite it is always wrong.

    ## Action Space

    `Discrete(num_cues)`: the answer. Actions before the query are ignored.

    ## Observation Space

    `Box(0, 1, (num_cues + 2,), float32)`:

    | Num            | Observation                                            |
    |----------------|--------------------------------------------------------|
    | 0..K-1         | one-hot of the cue value shown at this step (or zeros) |
    | K              | 1 if a cue is shown at this step (first or rewrite)    |
    | K+1            | 1 at the query step                                    |

    The observation after the answer is all zeros.

    ## Rewards

    1 for the right answer at the query step, 0 for a wrong one and 0 on every other step.

    ## Starting State

    The first value is uniform over `0..K-1`; the rewrite steps are a uniform random subset
    of `1..delay-1`; each rewrite adds a uniform offset in `1..K-1` modulo `K`, so it is
    uniform over the values other than the current one.

    ## Episode End

    Terminates after the answer, i.e. after `delay + 1` steps; no truncation. The final
    `info` holds `success` (1.0 if the answer was right, else 0.0).

    ## Arguments

    `num_cues` (K >= 2), `num_rewrites` (0..delay-1), `delay` (steps from the first cue to
    the query); their defaults are `DEFAULTS` in this module (`palimpsest envs` lists them).
    Seed through `reset(seed=...)`.
    """

    def __init__(self, *arguments, render_mode: str | None = None, **keywords):
        self._setup(make_config, draw_plans, plan_uniforms, arguments, keywords, render_mode)
        self._schedule: np.ndarray | None = None
        self._answer = 0
        self._t = 0

    __init__.__signature__ = config_signature(make_config)

    def _obs(self) -> np.ndarray:
        assert self._schedule is not None
        k, _, d = self.config
        obs = np.zeros(self.config.obs_dim, dtype=np.float32)
        if self._t <= d:
            value = self._schedule[self._t]
            if value != NO_CUE:
                obs[value] = 1.0
                obs[k] = 1.0
            obs[k + 1] = self._t == d
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        plan = self._plans.next(self.np_random)
        self._schedule, self._answer = plan["schedule"], int(plan["answer"])
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        assert self.action_space.contains(action), f"{action!r} ({type(action)}) invalid"
        assert self._schedule is not None, "Call reset before step"
        d = self.config.delay
        if self._t > d:
            # As CartPole: stepping a finished episode is undefined; keep it inert.
            logger.warn("step() called after the episode ended; call reset() first.")
            return self._obs(), 0.0, True, False, {}
        info: dict[str, Any] = {}
        reward = 0.0
        terminated = self._t == d
        if terminated:
            reward = float(action == self._answer)
            info["success"] = reward
        self._t += 1
        return self._obs(), reward, terminated, False, info
