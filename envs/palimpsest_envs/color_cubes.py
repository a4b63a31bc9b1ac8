"""Color cubes: fetch cubes by colour on a grid whose map is rewritten by teleports."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from palimpsest_envs._plans import PlannedEnv, config_signature, scaled

UP, DOWN, LEFT, RIGHT, PICK = 0, 1, 2, 3, 4

# The arguments' defaults, declared here only: make_config's signature reads them, and both
# classes take make_config's arguments (_plans.config_signature; tests/test_envs.py checks). A None takes its value from the mode (MODES),
# or, for max_steps, from make_config's budget.
DEFAULTS = MappingProxyType({
    "mode": "medium",
    "grid_size": None,
    "num_cubes": None,
    "num_phases": None,
    "teleports_per_phase": None,
    "max_steps": None,
    "penalty": -0.01,
    "goal_reward": 1.0,
})
# What each difficulty sets when an argument is left as None.
MODES: dict[str, dict[str, int]] = {
    "trivial": {"grid_size": 5, "num_cubes": 1, "num_phases": 1, "teleports_per_phase": 0},
    "medium": {"grid_size": 5, "num_cubes": 3, "num_phases": 3, "teleports_per_phase": 2},
    "extreme": {"grid_size": 7, "num_cubes": 5, "num_phases": 5, "teleports_per_phase": 3},
}
MAX_GRID = 64  # keeps cell indices in int16 and event offsets in uint8
MAX_CUBES = 64


class ColorCubesConfig(NamedTuple):
    """Validated arguments shared by ``ColorCubes`` and its batched twin."""

    mode: str
    grid_size: int
    num_cubes: int
    num_phases: int
    teleports_per_phase: int
    max_steps: int
    penalty: float
    goal_reward: float

    @property
    def num_cells(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def event_window(self) -> int:
        # Teleports fall within the longest shortest walk between two cells, i.e. while
        # an agent that goes straight to its target may still be on its way.
        return 2 * (self.grid_size - 1)

    @property
    def one_mover(self) -> bool:
        """True in "extreme": a teleport moves one non-target cube and shows only that cube."""
        return self.mode == "extreme"

    @property
    def draws_per_event(self) -> int:
        # One destination per non-target cube, or (which cube, its destination).
        return 2 if self.one_mover else self.num_cubes - 1

    @property
    def obs_dim(self) -> int:
        return 2 + 4 * self.num_cubes

    @property
    def num_actions(self) -> int:
        return 5  # UP, DOWN, LEFT, RIGHT, PICK


def make_config(
    mode: str = DEFAULTS["mode"],
    grid_size: int | None = DEFAULTS["grid_size"],
    num_cubes: int | None = DEFAULTS["num_cubes"],
    num_phases: int | None = DEFAULTS["num_phases"],
    teleports_per_phase: int | None = DEFAULTS["teleports_per_phase"],
    max_steps: int | None = DEFAULTS["max_steps"],
    penalty: float = DEFAULTS["penalty"],
    goal_reward: float = DEFAULTS["goal_reward"],
) -> ColorCubesConfig:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    by_mode = MODES[mode]
    g = int(by_mode["grid_size"] if grid_size is None else grid_size)
    n = int(by_mode["num_cubes"] if num_cubes is None else num_cubes)
    k = int(by_mode["num_phases"] if num_phases is None else num_phases)
    e = int(by_mode["teleports_per_phase"] if teleports_per_phase is None else teleports_per_phase)
    if not 2 <= g <= MAX_GRID:
        raise ValueError(f"grid_size must be in [2, {MAX_GRID}], got {g}")
    if not 1 <= n <= MAX_CUBES:
        raise ValueError(f"num_cubes must be in [1, {MAX_CUBES}], got {n}")
    # The agent and every cube hold distinct cells, and a teleport needs one more free cell.
    if n + 2 > g * g:
        raise ValueError(f"num_cubes must be <= grid_size**2 - 2 = {g * g - 2}, got {n}")
    if k < 1:
        raise ValueError(f"num_phases must be >= 1, got {k}")
    # Teleports of a phase take distinct steps among its first 2 * (grid_size - 1).
    if not 0 <= e <= 2 * (g - 1):
        raise ValueError(f"teleports_per_phase must be in [0, 2 * (grid_size - 1)] = [0, {2 * (g - 1)}], got {e}")
    # Default budget: four times the longest possible optimal episode (walk + pick per phase).
    steps = 4 * k * (2 * g - 1) if max_steps is None else int(max_steps)
    if steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {steps}")
    return ColorCubesConfig(mode, g, n, k, e, steps, float(penalty), float(goal_reward))


def plan_uniforms(cfg: ColorCubesConfig) -> int:
    """Uniform numbers per episode (see ``draw_plans``)."""
    k, e = cfg.num_phases, cfg.teleports_per_phase
    return cfg.num_cells + k + k * cfg.event_window * (e > 0) + k * e * cfg.draws_per_event + k


def draw_plans(u: np.ndarray, cfg: ColorCubesConfig) -> dict[str, np.ndarray]:
    """Everything random about ``len(u)`` episodes from their uniform numbers (``_plans.py``).

    ``start[0]`` is the agent's cell and ``start[1 + c]`` cube ``c``'s (distinct cells,
    row-major indices); ``targets[k]`` the target colour of phase ``k``; ``offsets[k]`` the
    steps into phase ``k`` (sorted, distinct, in ``1..2(G-1)``) at which teleports happen;
    ``event_draws[k, e]`` and ``collect_draws[k]`` are uniform 16-bit numbers that choose
    the moving cube and free destination cells (see ``choose_free_cells``).
    """
    n, k, e = cfg.num_cubes, cfg.num_phases, cfg.teleports_per_phase
    n_episodes, cells, window = len(u), cfg.num_cells, cfg.event_window
    parts = np.split(u, np.cumsum([cells, k, k * window * (e > 0), k * e * cfg.draws_per_event]), axis=1)
    start = np.argsort(parts[0], axis=1)[:, : n + 1]
    if n > 1:
        # Each next target moves by 1..n-1 (mod n): always a different colour.
        steps = np.concatenate([scaled(parts[1][:, :1], 0, n), scaled(parts[1][:, 1:], 1, n - 1)], axis=1)
        targets = np.cumsum(steps, axis=1) % n
    else:
        targets = np.zeros((n_episodes, k), dtype=np.int64)
    if e > 0:
        offsets = np.argsort(parts[2].reshape(n_episodes, k, window), axis=2)[:, :, :e] + 1
        offsets.sort(axis=2)
    else:
        offsets = np.zeros((n_episodes, k, 0), dtype=np.int64)
    event_draws = scaled(parts[3], 0, 2**16).reshape(n_episodes, k, e, cfg.draws_per_event)
    collect_draws = scaled(parts[4], 0, 2**16)
    return {
        "start": start.astype(np.int16),
        "targets": targets.astype(np.int8),
        "offsets": offsets.astype(np.uint8),
        "event_draws": event_draws.astype(np.uint16),
        "collect_draws": collect_draws.astype(np.uint16),
    }


def next_cells(grid_size: int) -> np.ndarray:
    """``(grid_size**2, 5)`` table: the cell each action leads to from each cell (row-major, row 0 on top).

    A move into the border stays; ``PICK`` stays.
    """
    row, col = np.divmod(np.arange(grid_size * grid_size), grid_size)
    last = grid_size - 1
    table = np.empty((grid_size * grid_size, 5), dtype=np.int64)
    table[:, UP] = np.maximum(row - 1, 0) * grid_size + col
    table[:, DOWN] = np.minimum(row + 1, last) * grid_size + col
    table[:, LEFT] = row * grid_size + np.maximum(col - 1, 0)
    table[:, RIGHT] = row * grid_size + np.minimum(col + 1, last)
    table[:, PICK] = row * grid_size + col
    return table


def cell_coordinates(grid_size: int) -> np.ndarray:
    """``(grid_size**2, 2)`` float32 table: each cell's row and column divided by ``grid_size - 1``."""
    row, col = np.divmod(np.arange(grid_size * grid_size), grid_size)
    return (np.stack([row, col], axis=1) / (grid_size - 1)).astype(np.float32)


def choose_free_cells(occupied: np.ndarray, draws: np.ndarray, num_cells: int) -> np.ndarray:
    """Column ``i``'s free cell number ``floor(draws[i] * n_free / 2**16)``, counting free cells row-major.

    ``occupied``: ``(k, m)`` cells taken in each of ``m`` grids (a cell may appear twice: the
    agent on a cube); ``draws``: ``(m,)`` uniform 16-bit numbers, so each free cell is
    equally likely to within ``n_free / 2**16``. Shared by both twins so that a teleport
    lands on the same cell in each.
    """
    cells = np.sort(occupied, axis=0)
    cells[1:][cells[1:] == cells[:-1]] = num_cells  # count a shared cell once
    n_free = num_cells - (cells < num_cells).sum(axis=0)
    free_cell = (draws.astype(np.int64) * n_free) >> 16
    # Walk past each taken cell at or before the candidate, in ascending order.
    for row in cells:
        free_cell += row <= free_cell
    return free_cell


_MODES_TABLE_MARK = "(MODES as a table: filled in from MODES after the class)"


def _modes_table(indent: str = "    ") -> str:
    """``MODES`` as the markdown table of ``ColorCubes``' docstring (so the numbers are written once)."""
    keys = list(next(iter(MODES.values())))
    rows = [
        "| mode      |" + "|".join(f" {k} " for k in keys) + "|",
        "|-----------|" + "|".join("-" * (len(k) + 2) for k in keys) + "|",
    ]
    rows += [
        f'| "{mode}"'.ljust(12) + "|" + "|".join(f" {v}".ljust(len(k) + 2) for k, v in values.items()) + "|"
        for mode, values in MODES.items()
    ]
    return f"\n{indent}".join(rows)


class ColorCubes(PlannedEnv):
    """
    ## Description

    A grid world where the agent must fetch cubes by colour while the cubes it is not
    fetching teleport, after the Color-Cubes task of "Memory Retention Is Not Enough to
    Master Memory Tasks in Reinforcement Learning" (2026). `num_cubes` cubes of distinct
    colours lie on a `grid_size` x `grid_size` grid. An episode has `num_phases` phases,
    each with a target colour: the agent must walk to the target cube and pick it. Cube
    positions are shown only on the steps right after events, so the agent must keep a
    map in memory and *rewrite* it whenever cubes move.

    ## Our reading of the paper

    The paper publishes no code; this is how we read its description.

    - Grid, `N` uniquely coloured cubes, `K` phases, one target colour per phase, `+1` for
      picking the target, which then teleports and a new target is assigned: as the paper.
    - Picking happens with an explicit `pick` action on the agent's cell; the agent walks
      over cubes freely. Picking a non-target cube ends the episode (failure).
    - Teleports: the paper's per-step probability `p_teleport` becomes a schedule drawn at
      reset: `teleports_per_phase` events per phase, at distinct steps drawn uniformly from
      the phase's first `2 * (grid_size - 1)` steps (the longest shortest walk); an event
      scheduled after the target was picked never happens. At an event every non-target
      cube teleports ("medium", "trivial"), or one non-target cube drawn uniformly does
      ("extreme"). The target cube never moves during its own phase.
    - "The full state is shown only after events": step 0 shows the full state (every
      cube's cell and the target colour). A teleport shows the full state in "medium"
      and "trivial", only the moved cube's new cell in "extreme" (selective rewriting: the
      rest of the map must be kept). A pick shows the new target colour and the picked
      cube's new cell only: unlike the paper's phase start, not the whole map, because a
      fresh map at every phase start would make teleports (which move only non-target
      cubes) irrelevant. So the next target may be a cube that moved earlier, and only a
      map rewritten at every event finds it. Between events the agent sees only itself.
    - Difficulties: "trivial" is the paper's N = K = 1 (one cube, nothing teleports: pure
      retention); "medium" and "extreme" use more cubes, phases and teleports.

    ## Action Space

    `Discrete(5)`: 0 up, 1 down, 2 left, 3 right, 4 pick (the cube on the agent's cell, if
    any). Row 0 is the top row; a move into the border stays.

    ## Observation Space

    `Box(0, 1, (2 + 4 * num_cubes,), float32)`, with `G = grid_size`, `N = num_cubes`:

    | Num                 | Observation                                                 |
    |---------------------|-------------------------------------------------------------|
    | 0, 1                | the agent's row and column, divided by `G - 1`              |
    | 2..N+1              | one-hot target colour, on the steps that show it (or zeros) |
    | N+2+3c              | 1 if cube `c`'s cell is shown at this step                  |
    | N+3+3c, N+4+3c      | cube `c`'s row and column / `(G - 1)` when shown, else 0    |

    ## Rewards

    `goal_reward` for picking the target; `penalty` on every other step (moves, picks on
    an empty cell, a wrong pick).

    ## Starting State

    The agent and the cubes take distinct uniformly random cells. The first target is
    uniform; each next one uniform over the other colours. A teleported cube lands on a
    uniformly random cell holding neither the agent nor a cube (so it always moves);
    several cubes moving at once are placed in colour order.

    ## Episode End

    Termination: a wrong pick, or the last target picked. Truncation: after `max_steps`
    steps. The final `info` holds `stages_passed` (phases completed), `stages` (`num_phases`)
    and `success`: 1.0 if all `num_phases` targets were picked,
    else 0.0.

    ## Arguments

    `mode`, `grid_size`, `num_cubes`, `num_phases`, `teleports_per_phase`, `max_steps`,
    `penalty`, `goal_reward`; their defaults are `DEFAULTS` in this module (`palimpsest envs`
    lists them). Left as `None`, the mode's arguments take its values (`MODES` in this module):

    (MODES as a table: filled in from MODES after the class)

    and `max_steps` is `4 * num_phases * (2 * grid_size - 1)`, four times the longest
    optimal episode. Seed through `reset(seed=...)`.
    """

    def __init__(self, *arguments, render_mode: str | None = None, **keywords):
        self._setup(make_config, draw_plans, plan_uniforms, arguments, keywords, render_mode)
        self._next_cell = next_cells(self.config.grid_size)
        self._coords = cell_coordinates(self.config.grid_size)
        self._plan: dict[str, np.ndarray] | None = None
        self._cubes = np.zeros(self.config.num_cubes, dtype=np.int64)  # cell of each colour
        self._agent = 0  # the agent's cell
        self._phase = 0  # index of the current target; num_phases once all are picked
        self._phase_t = 0  # steps since the phase began
        self._next_event = 0  # index into the phase's offsets
        self._shown = np.zeros(self.config.num_cubes, dtype=bool)
        self._target_shown = False

    __init__.__signature__ = config_signature(make_config)

    def _obs(self) -> np.ndarray:
        assert self._plan is not None
        n = self.config.num_cubes
        obs = np.zeros(self.config.obs_dim, dtype=np.float32)
        obs[:2] = self._coords[self._agent]
        if self._target_shown:
            obs[2 + self._plan["targets"][self._phase]] = 1.0
        view = obs[2 + n :].reshape(n, 3)
        view[self._shown, 0] = 1.0
        view[self._shown, 1:] = self._coords[self._cubes[self._shown]]
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._plan = plan = self._plans.next(self.np_random)
        self._agent = int(plan["start"][0])
        self._cubes = plan["start"][1:].astype(np.int64)
        self._phase = self._phase_t = self._next_event = self._steps = 0
        self._shown[:] = True
        self._target_shown = True
        self._ended = None
        return self._obs(), {}

    def _teleport(self, colour: int, draw: np.uint16) -> None:
        occupied = np.append(self._cubes, self._agent)[:, None]
        self._cubes[colour] = choose_free_cells(occupied, np.array([draw]), self.config.num_cells)[0]
        self._shown[colour] = True

    def step(self, action):
        assert self.action_space.contains(action), f"{action!r} ({type(action)}) invalid"
        assert self._plan is not None, "Call reset before step"
        if (ended := self._after_end()) is not None:
            return ended
        cfg, plan = self.config, self._plan
        self._shown[:] = False
        self._target_shown = False
        self._agent = int(self._next_cell[self._agent, action])
        here = np.flatnonzero(self._cubes == self._agent)
        reward, terminated = cfg.penalty, False
        target = int(plan["targets"][self._phase])
        if action == PICK and here.size:
            if here[0] == target:
                reward = cfg.goal_reward
                self._teleport(target, plan["collect_draws"][self._phase])
                self._phase += 1
                self._phase_t = self._next_event = 0
                terminated = self._phase == cfg.num_phases
                self._target_shown = not terminated
            else:
                terminated = True
        else:  # teleport events happen on steps where no cube was picked
            self._phase_t += 1
            offsets = plan["offsets"][self._phase]
            e = self._next_event
            if e < offsets.size and offsets[e] == self._phase_t:
                self._next_event += 1
                draws = plan["event_draws"][self._phase, e]
                if cfg.one_mover:
                    if cfg.num_cubes > 1:
                        m = (int(draws[0]) * (cfg.num_cubes - 1)) >> 16  # m-th non-target colour
                        self._teleport(m + (m >= target), draws[1])
                else:
                    # Every non-target cube, in colour order; slot s is the s-th non-target colour.
                    for slot in range(cfg.num_cubes - 1):
                        self._teleport(slot + (slot >= target), draws[slot])
                    self._shown[:] = True
                    self._target_shown = True
        return self._end_step(reward, terminated, self._phase, cfg.num_phases)


if ColorCubes.__doc__:  # None under python -OO
    ColorCubes.__doc__ = ColorCubes.__doc__.replace(_MODES_TABLE_MARK, _modes_table())
