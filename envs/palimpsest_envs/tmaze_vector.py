"""Batched numpy twin of ``EndlessTMaze``."""

from __future__ import annotations

import numpy as np

from palimpsest_envs._plans import Plan, PlannedVectorEnv, config_signature
from palimpsest_envs.tmaze import CUE_LEFT, CUE_RIGHT, FORWARD, LEFT, draw_plans, make_config, plan_uniforms


class EndlessTMazeVector(PlannedVectorEnv):
    """
    ## Description

    `num_envs` copies of `EndlessTMaze` stepped together with numpy array operations; the
    rules, arguments and spaces are those of `EndlessTMaze` (see its docstring).

    ## Action Space

    `MultiDiscrete([3] * num_envs)`: 0 forward, 1 left, 2 right per sub-environment.

    ## Observation Space

    `Box(0, 1, (num_envs, 3 or 4), float32)`, row `i` as in `EndlessTMaze`.

    ## Rewards

    As `EndlessTMaze`, as a float64 array.

    ## Starting State

    `reset(seed=s)` seeds sub-env `i` exactly as `EndlessTMaze.reset(seed=s + i)` does (a
    list of seeds gives one per sub-env; `None` continues each sub-env's generator), so the
    same seeds and actions give the same trajectories as the single environments.

    ## Episode End

    As `EndlessTMaze` (`info["stages_passed"]`, `info["stages"]` masked alike). Autoreset is `NEXT_STEP`: the step after a sub-env terminates or
    truncates resets it, ignores its action, and returns its first observation with
    reward 0 and terminated/truncated False (what `EndlessTMaze.reset()` without a seed
    would give). `info["success"]`, masked by `info["_success"]`, is set for sub-envs whose
    episode ended this step.

    ## Arguments

    `num_envs` plus the arguments of `EndlessTMaze`, with the same defaults (`DEFAULTS` there).
    """

    def __init__(self, num_envs: int = 1, *arguments, render_mode: str | None = None, **keywords):
        cfg, n = self._setup(num_envs, make_config, draw_plans, plan_uniforms, arguments, keywords, render_mode)
        self._cues = np.zeros((n, cfg.num_corridors), dtype=np.int8)
        self._lengths = np.zeros((n, cfg.num_corridors), dtype=np.int32)
        self._corridor = np.zeros(n, dtype=np.int32)
        self._x = np.zeros(n, dtype=np.int32)
        self._steps = np.zeros(n, dtype=np.int32)
        self.stages = cfg.num_corridors

    __init__.__signature__ = config_signature(make_config, batched=True)

    def _start_episodes(self, env_ids: np.ndarray, plan: Plan) -> None:
        self._cues[env_ids] = plan["cues"]
        self._lengths[env_ids] = plan["lengths"]
        self._corridor[env_ids] = 0
        self._x[env_ids] = 0
        self._steps[env_ids] = 0

    def _current(self) -> tuple[np.ndarray, np.ndarray]:
        # Past the last corridor the index is clipped, as in EndlessTMaze._obs.
        c = np.minimum(self._corridor, self.config.num_corridors - 1)
        return self._lengths[self._rows, c], self._cues[self._rows, c]

    def _obs(self) -> np.ndarray:
        lengths, cues = self._current()
        at_start = self._x == 0
        obs = np.empty((self.num_envs, self.config.obs_dim), dtype=np.float32)
        obs[:, 0] = self._x / self.config.max_length
        obs[:, 1] = at_start & (cues == CUE_LEFT)
        obs[:, 2] = at_start & (cues == CUE_RIGHT)
        if self.config.junction_signal:
            obs[:, 3] = self._x == lengths
        return obs

    def step(self, actions):
        if not self._started:
            raise RuntimeError("Call reset before step")
        cfg = self.config
        a = np.asarray(actions).reshape(self.num_envs)
        if a.size and (a.min() < 0 or a.max() > 2):
            raise ValueError(f"actions must be in {{0, 1, 2}}, got {a}")
        live = ~self._pending_reset
        lengths, cues = self._current()
        at_junction = self._x == lengths
        in_corridor = live & ~at_junction
        forward = a == FORWARD
        passed = live & at_junction & (a == LEFT + cues)
        failed = live & at_junction & ~passed

        self._x += in_corridor & forward
        self._corridor += passed
        finished = passed & (self._corridor == cfg.num_corridors)
        self._x[passed & ~finished] = 0
        self._steps += live

        rewards = np.zeros(self.num_envs, dtype=np.float64)
        rewards[(in_corridor & ~forward) | failed] = cfg.penalty
        rewards[passed] = cfg.goal_reward
        terminated = failed | finished
        truncated = live & ~terminated & (self._steps >= cfg.max_steps)
        return self._end_step(rewards, terminated, truncated, success=self._corridor == cfg.num_corridors,
                              stages_passed=self._corridor)
