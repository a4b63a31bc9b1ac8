"""Batched numpy twin of ``CueRewrite``."""

from __future__ import annotations

import numpy as np

from palimpsest_envs._plans import Plan, PlannedVectorEnv, config_signature
from palimpsest_envs.cue_rewrite import NO_CUE, draw_plans, make_config, plan_uniforms


class CueRewriteVector(PlannedVectorEnv):
    """
    ## Description

    `num_envs` copies of `CueRewrite` stepped together with numpy array operations; the
    rules, arguments and spaces are those of `CueRewrite` (see its docstring).

    ## Action Space

    `MultiDiscrete([num_cues] * num_envs)`.

    ## Observation Space

    `Box(0, 1, (num_envs, num_cues + 2), float32)`, row `i` as in `CueRewrite`.

    ## Rewards

    As `CueRewrite`, as a float64 array.

    ## Starting State

    `reset(seed=s)` seeds sub-env `i` exactly as `CueRewrite.reset(seed=s + i)` does (a list
    of seeds gives one per sub-env; `None` continues each sub-env's generator), so the same
    seeds and actions give the same trajectories as the single environments.

    ## Episode End

    As `CueRewrite`. Autoreset is `NEXT_STEP`: the step after a sub-env terminates resets
    it, ignores its action, and returns its first observation with reward 0 and
    terminated/truncated False. `info["success"]`, masked by `info["_success"]`, is set for
    sub-envs whose episode ended this step.

    ## Arguments

    `num_envs` plus the arguments of `CueRewrite`, with the same defaults (`DEFAULTS` there).
    """

    def __init__(self, num_envs: int = 1, *arguments, render_mode: str | None = None, **keywords):
        cfg, n = self._setup(num_envs, make_config, draw_plans, plan_uniforms, arguments, keywords, render_mode)
        self._schedule = np.full((n, cfg.delay + 1), NO_CUE, dtype=np.int16)
        self._answer = np.zeros(n, dtype=np.int16)
        self._t = np.zeros(n, dtype=np.int32)

    __init__.__signature__ = config_signature(make_config, batched=True)

    def _start_episodes(self, env_ids: np.ndarray, plan: Plan) -> None:
        self._schedule[env_ids] = plan["schedule"]
        self._answer[env_ids] = plan["answer"]
        self._t[env_ids] = 0

    def _obs(self) -> np.ndarray:
        k, _, d = self.config
        # t == d + 1 (after the answer) reads a clipped index but is masked out below.
        value = self._schedule[self._rows, np.minimum(self._t, d)]
        shown = (self._t <= d) & (value != NO_CUE)
        obs = np.zeros((self.num_envs, self.config.obs_dim), dtype=np.float32)
        obs[self._rows[shown], value[shown]] = 1.0
        obs[:, k] = shown
        obs[:, k + 1] = self._t == d
        return obs

    def step(self, actions):
        if not self._started:
            raise RuntimeError("Call reset before step")
        a = np.asarray(actions).reshape(self.num_envs)
        if a.size and (a.min() < 0 or a.max() >= self.config.num_cues):
            raise ValueError(f"actions must be in [0, {self.config.num_cues}), got {a}")
        live = ~self._pending_reset
        terminated = live & (self._t == self.config.delay)
        rewards = (terminated & (a == self._answer)).astype(np.float64)
        self._t += live
        truncated = np.zeros(self.num_envs, dtype=bool)

        return self._end_step(rewards, terminated, truncated, success=rewards > 0)
