"""Batched numpy twin of ``ColorCubes``."""

from __future__ import annotations

import numpy as np

from palimpsest_envs._plans import Plan, PlannedVectorEnv, config_signature
from palimpsest_envs.color_cubes import (
    PICK, cell_coordinates, choose_free_cells, draw_plans, make_config, next_cells, plan_uniforms,
)

NO_EVENT = np.iinfo(np.int32).max  # `_event_at` of a phase with no teleport left


class ColorCubesVector(PlannedVectorEnv):
    """
    ## Description

    `num_envs` copies of `ColorCubes` stepped together with numpy array operations; the
    rules, arguments and spaces are those of `ColorCubes` (see its docstring).

    ## Action Space

    `MultiDiscrete([5] * num_envs)`: 0 up, 1 down, 2 left, 3 right, 4 pick per sub-environment.

    ## Observation Space

    `Box(0, 1, (num_envs, 2 + 4 * num_cubes), float32)`, row `i` as in `ColorCubes`.

    ## Rewards

    As `ColorCubes`, as a float64 array.

    ## Starting State

    `reset(seed=s)` seeds sub-env `i` exactly as `ColorCubes.reset(seed=s + i)` does (a list
    of seeds gives one per sub-env; `None` continues each sub-env's generator), so the same
    seeds and actions give the same trajectories as the single environments.

    ## Episode End

    As `ColorCubes`. Autoreset is `NEXT_STEP`: the step after a sub-env terminates or
    truncates resets it, ignores its action, and returns its first observation with
    reward 0 and terminated/truncated False. `info["success"]`, masked by
    `info["_success"]`, is set for sub-envs whose episode ended this step.

    ## Arguments

    `num_envs` plus the arguments of `ColorCubes`, with the same defaults (`DEFAULTS` there).
    """

    def __init__(self, num_envs: int = 1, *arguments, render_mode: str | None = None, **keywords):
        cfg, n = self._setup(num_envs, make_config, draw_plans, plan_uniforms, arguments, keywords, render_mode)
        k, e, c = cfg.num_phases, cfg.teleports_per_phase, cfg.num_cubes
        # Lookup tables: the cell each action leads to, and each cell's scaled row and column.
        self._next_cell = next_cells(cfg.grid_size).ravel()
        self._cell_xy = cell_coordinates(cfg.grid_size)
        self._cell_row, self._cell_col = self._cell_xy.T.copy()

        self._targets = np.zeros((n, k + 1), dtype=np.int64)  # column k: a dummy past the last phase
        self._offsets = np.full((n, k + 1, e + 1), NO_EVENT, dtype=np.int32)  # sentinel row and column
        self._event_draws = np.zeros((n, k, e, cfg.draws_per_event), dtype=np.uint16)
        self._collect_draws = np.zeros((n, k), dtype=np.uint16)
        self._agent = np.zeros(n, dtype=np.int64)  # the agent's cell
        # Colour-major (num_cubes, num_envs): reductions over colours stay fast.
        self._cubes = np.zeros((c, n), dtype=np.int64)  # cell of each colour
        self._shown = np.zeros((c, n), dtype=bool)
        self._phase = np.zeros(n, dtype=np.int64)
        self._target = np.zeros(n, dtype=np.int64)  # the current phase's target colour
        self._phase_t = np.zeros(n, dtype=np.int64)
        self._next_event = np.zeros(n, dtype=np.int64)
        self._event_at = np.zeros(n, dtype=np.int64)  # phase step of the next teleport
        self._steps = np.zeros(n, dtype=np.int64)
        self._target_shown = np.zeros(n, dtype=bool)
        self.stages = cfg.num_phases

    __init__.__signature__ = config_signature(make_config, batched=True)

    def _start_episodes(self, env_ids: np.ndarray, plan: Plan) -> None:
        k = self.config.num_phases
        self._agent[env_ids] = plan["start"][:, 0]
        self._cubes[:, env_ids] = plan["start"][:, 1:].T
        self._targets[env_ids, :k] = plan["targets"]
        self._target[env_ids] = plan["targets"][:, 0]
        self._offsets[env_ids, :k, :-1] = plan["offsets"]
        self._event_draws[env_ids] = plan["event_draws"]
        self._collect_draws[env_ids] = plan["collect_draws"]
        self._phase[env_ids] = 0
        self._phase_t[env_ids] = 0
        self._next_event[env_ids] = 0
        self._event_at[env_ids] = self._offsets[env_ids, 0, 0]
        self._steps[env_ids] = 0
        self._shown[:, env_ids] = True
        self._target_shown[env_ids] = True

    def _obs(self) -> np.ndarray:
        n = self.config.num_cubes
        obs = np.zeros((self.num_envs, self.config.obs_dim), dtype=np.float32)
        obs[:, :2] = self._cell_xy.take(self._agent, axis=0)
        ts = np.flatnonzero(self._target_shown)
        obs[ts, 2 + self._target[ts]] = 1.0
        # Only the few sub-envs with an event this step show cubes.
        viewing = np.flatnonzero(self._shown.any(axis=0))
        if viewing.size:
            shown, cubes = self._shown[:, viewing], self._cubes[:, viewing]
            obs[viewing, 2 + n :: 3] = shown.T
            obs[viewing, 3 + n :: 3] = (self._cell_row.take(cubes) * shown).T
            obs[viewing, 4 + n :: 3] = (self._cell_col.take(cubes) * shown).T
        return obs

    def _teleport(self, env_ids: np.ndarray, colours: np.ndarray, draws: np.ndarray) -> None:
        """Move cube ``colours[i]`` of sub-env ``env_ids[i]`` to a free cell chosen by ``draws[i]``."""
        occupied = np.concatenate((self._cubes[:, env_ids], self._agent[None, env_ids]))
        new = choose_free_cells(occupied, draws, self.config.num_cells)
        self._cubes[colours, env_ids] = new
        self._shown[colours, env_ids] = True

    def step(self, actions):
        if not self._started:
            raise RuntimeError("Call reset before step")
        cfg = self.config
        a = np.asarray(actions).reshape(self.num_envs)
        if a.size and (a.min() < 0 or a.max() > PICK):
            raise ValueError(f"actions must be in [0, {PICK}], got {a}")
        live = ~self._pending_reset
        self._shown[:] = False
        self._target_shown[:] = False
        # Sub-envs that restart this step move too, but _start_episodes overwrites them below.
        self._agent = self._next_cell.take(self._agent * 5 + a)

        # Picks: only the sub-envs that pick look at the cubes.
        pickers = np.flatnonzero(live & (a == PICK))
        agent, target = self._agent[pickers], self._target[pickers]
        on_cube = (self._cubes[:, pickers] == agent).any(axis=0)
        right = self._cubes[target, pickers] == agent
        collected = pickers[right]
        wrong = pickers[on_cube & ~right]
        if collected.size:
            phase = self._phase[collected]
            self._teleport(collected, target[right], self._collect_draws[collected, phase])
            phase += 1
            self._phase[collected] = phase
            self._target[collected] = self._targets[collected, phase]
            self._phase_t[collected] = 0
            self._next_event[collected] = 0
            self._event_at[collected] = self._offsets[collected, phase, 0]
            self._target_shown[collected] = phase < cfg.num_phases

        # Teleport events happen on steps where no cube was picked.
        walking = live.copy()
        walking[pickers[on_cube]] = False
        self._phase_t += walking
        events = np.flatnonzero(walking & (self._phase_t == self._event_at))
        if events.size:
            self._teleport_event(events)

        rewards = live * cfg.penalty
        rewards[collected] = cfg.goal_reward
        terminated = self._phase == cfg.num_phases
        terminated[wrong] = True
        terminated &= live
        self._steps += live
        truncated = live & ~terminated & (self._steps >= cfg.max_steps)
        return self._end_step(rewards, terminated, truncated, success=self._phase == cfg.num_phases,
                              stages_passed=self._phase)

    def _teleport_event(self, env_ids: np.ndarray) -> None:
        cfg = self.config
        phase, e, target = self._phase[env_ids], self._next_event[env_ids], self._target[env_ids]
        draws = self._event_draws[env_ids, phase, e]  # (m, draws_per_event)
        self._next_event[env_ids] = e + 1
        self._event_at[env_ids] = self._offsets[env_ids, phase, e + 1]
        if cfg.one_mover:
            if cfg.num_cubes > 1:
                m = (draws[:, 0].astype(np.int64) * (cfg.num_cubes - 1)) >> 16  # m-th non-target colour
                self._teleport(env_ids, m + (m >= target), draws[:, 1])
            return
        # Every non-target cube moves, in colour order (each sees the cells taken before it):
        # the one in slot s is the s-th non-target colour.
        for slot in range(cfg.num_cubes - 1):
            self._teleport(env_ids, slot + (slot >= target), draws[:, slot])
        self._shown[:, env_ids] = True
        self._target_shown[env_ids] = True
