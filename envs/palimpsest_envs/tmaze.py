"""Endless T-maze: a chain of T-mazes whose cue is rewritten at every corridor."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from palimpsest_envs._plans import PlannedEnv, config_signature, scaled

FORWARD, LEFT, RIGHT = 0, 1, 2
CUE_LEFT, CUE_RIGHT = 0, 1

# The arguments' defaults, declared here only: make_config's signature reads them, and both
# classes take make_config's arguments (_plans.config_signature; tests/test_envs.py checks).
DEFAULTS = MappingProxyType({
    "num_corridors": 5,
    "corridor_length": 10,
    "length_mode": "fixed",
    "min_length": 1,
    "max_length": None,  # None: corridor_length
    "penalty": -0.01,
    "goal_reward": 1.0,
    "junction_signal": False,
})


class TMazeConfig(NamedTuple):
    """Validated arguments shared by ``EndlessTMaze`` and its batched twin."""

    num_corridors: int
    uniform: bool
    min_length: int
    max_length: int  # L_max: the fixed length, or the upper end of the uniform draw
    penalty: float
    goal_reward: float
    junction_signal: bool

    @property
    def max_steps(self) -> int:
        # The paper's budget: six times the longest possible optimal episode.
        return 6 * (self.max_length + 1) * self.num_corridors

    @property
    def obs_dim(self) -> int:
        return 4 if self.junction_signal else 3

    @property
    def num_actions(self) -> int:
        return 3  # FORWARD, LEFT, RIGHT


def make_config(
    num_corridors: int = DEFAULTS["num_corridors"],
    corridor_length: int = DEFAULTS["corridor_length"],
    length_mode: str = DEFAULTS["length_mode"],
    min_length: int = DEFAULTS["min_length"],
    max_length: int | None = DEFAULTS["max_length"],
    penalty: float = DEFAULTS["penalty"],
    goal_reward: float = DEFAULTS["goal_reward"],
    junction_signal: bool = DEFAULTS["junction_signal"],
) -> TMazeConfig:
    if num_corridors < 1:
        raise ValueError(f"num_corridors must be >= 1, got {num_corridors}")
    if length_mode == "fixed":
        lo = hi = int(corridor_length)
    elif length_mode == "uniform":
        lo = int(min_length)
        hi = int(corridor_length if max_length is None else max_length)
    else:
        raise ValueError(f"length_mode must be 'fixed' or 'uniform', got {length_mode!r}")
    # Length 0 would put the cue and the junction on the same cell.
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= min_length <= max_length, got {lo}..{hi}")
    return TMazeConfig(
        int(num_corridors), length_mode == "uniform", lo, hi,
        float(penalty), float(goal_reward), bool(junction_signal),
    )


def plan_uniforms(cfg: TMazeConfig) -> int:
    """Uniform numbers per episode: a cue and a length per corridor."""
    return 2 * cfg.num_corridors


def draw_plans(u: np.ndarray, cfg: TMazeConfig) -> dict[str, np.ndarray]:
    """Cues and corridor lengths of ``len(u)`` episodes from their uniform numbers (``_plans.py``)."""
    n = cfg.num_corridors
    cues = (u[:, :n] < 0.5).astype(np.int8)
    if cfg.uniform:  # min_length .. max_length, both ends included
        lengths = scaled(u[:, n:], cfg.min_length, cfg.max_length - cfg.min_length + 1)
    else:
        lengths = np.full((len(u), n), cfg.max_length)
    return {"cues": cues, "lengths": lengths.astype(np.int32)}


class EndlessTMaze(PlannedEnv):
    """
    ## Description

    A chain of `num_corridors` T-mazes, after the Endless T-Maze of "Memory Retention Is
    Not Enough to Master Memory Tasks in Reinforcement Learning" (reference code:
    github.com/Quartz-Admirer/Adaptive-Memory-Envs, `environments/endless_tmaze.py` and
    `environments/endless_tmaze_env.py`). Each corridor shows a left/right cue on its first
    cell only; at its end (the junction) the agent must turn the way the cue said. A correct
    turn starts the next corridor with a fresh cue that *replaces* the previous one, so the
    agent must overwrite its memory rather than only retain it. `num_corridors=1` is the
    classic T-maze.

    ## Action Space

    `Discrete(3)`: 0 move forward, 1 turn left, 2 turn right.

    ## Observation Space

    `Box(0, 1, (3,), float32)`, or `(4,)` with `junction_signal=True`:

    | Num | Observation                                             |
    |-----|---------------------------------------------------------|
    | 0   | position `x / L_max` (`L_max`: the longest corridor)    |
    | 1   | 1 if `x == 0` and the cue says left, else 0             |
    | 2   | 1 if `x == 0` and the cue says right, else 0            |
    | 3   | (only with `junction_signal`) 1 if at the junction      |

    With `length_mode="uniform"` nothing but the optional entry 3 tells the agent where the
    junction is, as in the paper's version.

    ## Rewards

    Inside a corridor (`x < L`): forward gives 0 and moves one cell; a turn gives `penalty`
    and does not move. At the junction (`x == L`): the turn matching the cue gives
    `goal_reward`; any other action, forward included, gives `penalty`.

    ## Starting State

    `x = 0` in the first corridor. Every corridor's cue is uniform over left/right and
    independent; its length is `corridor_length`, or uniform over
    `min_length..max_length` (inclusive) per corridor with `length_mode="uniform"`.

    ## Episode End

    Termination: a wrong action at a junction, or a correct turn at the last junction.
    Truncation: after `6 * (L_max + 1) * num_corridors` steps. The final `info` holds
    `success`: 1.0 if every corridor was passed, else 0.0; `stages_passed`: the corridors
    passed; `stages`: `num_corridors` (so retention, corridor 1, and rewriting, the later
    corridors, can be scored apart).

    ## Arguments

    `num_corridors`, `corridor_length`, `length_mode` (`"fixed"` or `"uniform"`),
    `min_length`, `max_length` (`None`: `corridor_length`), `penalty`, `goal_reward`,
    `junction_signal`; their defaults are `DEFAULTS` in this module (`palimpsest envs`
    lists them). Seed through `reset(seed=...)`.

    ## Departures from the reference code

    - Randomness comes from `self.np_random` (the reference uses the global `random`
      module, so `reset(seed=...)` did not seed it). Plans are drawn in blocks of episodes
      (see `_plans.py`); the distribution is the reference's.
    - A termination on the very step that exhausts the step budget is reported as
      `terminated` (the reference wrapper reports it as `truncated`).
    - `corridor_length`/`min_length`/`max_length` replace the reference's
      `lengths: {mode, min, max}` config; `L_max` is `max_length` (uniform) or
      `corridor_length` (fixed), as there.
    - `junction_signal=True` is an addition (the reference has no such entry).
    """

    def __init__(self, *arguments, render_mode: str | None = None, **keywords):
        self._setup(make_config, draw_plans, plan_uniforms, arguments, keywords, render_mode)
        self._cues: np.ndarray | None = None
        self._lengths: np.ndarray | None = None
        self._corridor = 0
        self._x = 0

    __init__.__signature__ = config_signature(make_config)

    def _obs(self) -> np.ndarray:
        assert self._cues is not None and self._lengths is not None
        # After the last correct turn the corridor index runs past the end; keep showing it.
        c = min(self._corridor, self.config.num_corridors - 1)
        at_start = self._x == 0
        obs = np.zeros(self.config.obs_dim, dtype=np.float32)
        obs[0] = self._x / self.config.max_length
        obs[1] = at_start and self._cues[c] == CUE_LEFT
        obs[2] = at_start and self._cues[c] == CUE_RIGHT
        if self.config.junction_signal:
            obs[3] = self._x == self._lengths[c]
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        plan = self._plans.next(self.np_random)
        self._cues, self._lengths = plan["cues"], plan["lengths"]
        self._corridor = 0
        self._x = 0
        self._steps = 0
        self._ended = None
        return self._obs(), {}

    def step(self, action):
        assert self.action_space.contains(action), f"{action!r} ({type(action)}) invalid"
        assert self._cues is not None and self._lengths is not None, "Call reset before step"
        if (ended := self._after_end()) is not None:
            return ended
        cfg = self.config
        c = self._corridor
        terminated = False
        if self._x < self._lengths[c]:
            if action == FORWARD:
                reward = 0.0
                self._x += 1
            else:
                reward = cfg.penalty
        elif action == LEFT + self._cues[c]:  # cue 0 -> action 1 (left), cue 1 -> action 2
            reward = cfg.goal_reward
            self._corridor += 1
            if self._corridor == cfg.num_corridors:
                terminated = True
            else:
                self._x = 0
        else:
            reward = cfg.penalty
            terminated = True
        return self._end_step(reward, terminated, self._corridor, cfg.num_corridors)
