"""`replay`: experience replay from a reservoir buffer.

Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019 (ER with
reservoir sampling; Vitter, "Random Sampling with a Reservoir", 1985, Algorithm R).
Each finished task's examples stream through the reservoir, so every example seen so far
has the same chance, buffer_size / seen, to be in the buffer. Every global batch then
holds round(replay_ratio · batch_size) buffer samples and the rest from the current task.
"""

from __future__ import annotations

import random

import numpy as np

from palimpsest.continual import register
from palimpsest.continual.base import ContinualMethod, LoopState, hash_seed
from palimpsest.train.batching import global_batch_indices


@register("replay")
class Replay(ContinualMethod):
    def __init__(self, buffer_size: int = 64, replay_ratio: float = 0.5):
        if buffer_size < 1 or not 0 < replay_ratio < 1:
            raise ValueError("replay: buffer_size ≥ 1 and 0 < replay_ratio < 1")
        self.buffer_size, self.replay_ratio = buffer_size, replay_ratio
        self.buffer: list[tuple[int, int]] = []  # (task, index) references: small to checkpoint
        self.seen = 0

    def replay_count(self, batch_size: int) -> int:
        return int(round(self.replay_ratio * batch_size)) if self.buffer else 0

    def global_batch(self, state: LoopState, step: int):
        items = state.tasks[state.task]
        n_replay = self.replay_count(state.batch_size)
        current = global_batch_indices(step, num_examples=len(items), batch_size=state.batch_size - n_replay,
                                       seed=hash_seed(state.seed, state.task))
        batch = [items[i] for i in current]
        if n_replay:
            rng = np.random.default_rng([state.seed, state.task, step])
            picks = rng.choice(len(self.buffer), size=n_replay, replace=len(self.buffer) < n_replay)
            batch += [state.tasks[t][i] for t, i in (self.buffer[p] for p in picks)]
            # interleave so every rank's shard mixes old and new samples
            batch = [batch[i] for i in rng.permutation(len(batch))]
        return batch

    def after_task(self, state: LoopState) -> None:
        rng = random.Random(hash_seed(state.seed, state.task))
        for index in range(len(state.tasks[state.task])):
            self.seen += 1
            if len(self.buffer) < self.buffer_size:
                self.buffer.append((state.task, index))
            else:
                slot = rng.randrange(self.seen)
                if slot < self.buffer_size:
                    self.buffer[slot] = (state.task, index)

    def state_dict(self) -> dict:
        return {"buffer": list(self.buffer), "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = [tuple(x) for x in state["buffer"]]
        self.seen = state["seen"]
