"""Parameter-matched agents: the hidden width at which each agent has about the same number of parameters.

An agent is encoder (obs → H) + memory cell (H → H) + policy (H → actions) + value (H → 1)
(`rl/module.py`). Comparing memories at one width would favour the ones with more weights
per unit of width (an LSTM has 4·(2H² + 2H) in its cell, a GRU 3/4 of that); the benchmark
instead gives every agent the width whose total is closest to one parameter budget.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from palimpsest.rl.catalog import AGENTS, width_step
from palimpsest.rl.memory import make_cell

MAX_WIDTH = 4096


def parameter_count(agent: str, hidden: int, obs_dim: int, num_actions: int, memory: dict | None = None) -> int:
    """Trainable parameters of `agent` at width `hidden` (built on the meta device: no memory is used)."""
    with torch.device("meta"):
        parts = [nn.Linear(obs_dim, hidden), make_cell(AGENTS[agent], hidden, hidden, memory),
                 nn.Linear(hidden, num_actions), nn.Linear(hidden, 1)]
    return sum(p.numel() for part in parts for p in part.parameters() if p.requires_grad)


def matched_width(agent: str, parameters: int, obs_dim: int, num_actions: int, memory: dict | None = None) -> int:
    """The width (a multiple of the agent's step) whose parameter count is closest to `parameters`.

    The count grows with the width, so a bisection finds the two widths around the budget.
    """
    step = width_step(agent, memory)

    def count(units: int) -> int:
        return parameter_count(agent, units * step, obs_dim, num_actions, memory)

    low, high = 1, MAX_WIDTH // step
    if count(high) < parameters:
        return high * step
    while high - low > 1:  # invariant: count(low) < parameters <= count(high), unless low is 1
        middle = (low + high) // 2
        if count(middle) < parameters:
            low = middle
        else:
            high = middle
    best = min((low, high), key=lambda units: (abs(count(units) - parameters), units))
    return best * step
