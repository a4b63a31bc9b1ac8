"""The memory agents by name, torch-free (the spec and `validate` read it without importing torch).

Each agent is the same trunk (a linear encoder, a memory cell, policy and value heads,
`rl/module.py`); the cell is what differs (`rl/memory.py`, where each cites its paper).
`MEMORY_PARAMS` are the cell's own arguments with their defaults, so a job can set them
(`agents: [{name: ffm, memory: {memory: 16}}]`) and `validate` can check their names.
"""

from __future__ import annotations

AGENTS: dict[str, str] = {"mlp": "none", "lstm": "lstm", "gru": "gru", "gtrxl": "gtrxl", "ffm": "ffm",
                          "shm": "shm", "slots": "slots"}

MEMORY_PARAMS: dict[str, dict[str, object]] = {
    "none": {},
    "gru": {},
    "lstm": {},
    "ffm": {"memory": 32, "context": 4, "min_period": 1.0, "max_period": 1024.0},
    "shm": {"size": 16, "table": 128, "theta": "random"},
    "slots": {"slots": 8, "width": 16},
    "gtrxl": {"layers": 2, "heads": 4, "window": 96},
}

# The arguments that name a rule rather than a size: their allowed values (the first is the default).
MEMORY_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("shm", "theta"): ("random", "first"),  # the SHM paper's random row per step; the authors' POPGym code's row 0
}

PAPERS: dict[str, str] = {
    "mlp": "no memory: a two-layer MLP on the current observation (the memoryless baseline)",
    "lstm": "Hochreiter & Schmidhuber, Long Short-Term Memory, 1997",
    "gru": "Cho et al., Learning Phrase Representations using RNN Encoder-Decoder, 2014",
    "gtrxl": "Parisotto et al., Stabilizing Transformers for Reinforcement Learning, ICML 2020",
    "ffm": "Morad et al., Reinforcement Learning with Fast and Forgetful Memory, NeurIPS 2023",
    "shm": "Le et al., Stable Hadamard Memory, ICLR 2025",
    "slots": "slot memory with learned write and erase, after Graves et al., Neural Turing Machines, 2014",
}


def width_step(agent: str, memory: dict | None = None) -> int:
    """Hidden widths an agent accepts are multiples of this (attention heads must divide the width)."""
    if AGENTS[agent] == "gtrxl":
        return int((memory or {}).get("heads", MEMORY_PARAMS["gtrxl"]["heads"]))
    return 1
