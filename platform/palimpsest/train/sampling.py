"""Which examples a step sees, and the seeds behind every random choice of a run.

Shared by the loop and every method, tested once (tests/test_sampling.py):
- `derive_seed` / `rng_for`: one convention for all randomness, a pure function of the
  run's seed, a purpose and integer keys (task, step, ...), so a restart replays it;
- `global_batch_indices`: seeded epochs over a task's examples;
- `shard_for_rank`: the contiguous slice of a global batch one worker computes;
- `reservoir_update`: Vitter's Algorithm R ("Random Sampling with a Reservoir", 1985).
"""

from __future__ import annotations

import zlib
from typing import Iterable, Sequence

import functools

import numpy as np


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed from the run's seed, a purpose ("batches", "replay", ...) and integer keys.

    Stable across processes and Python versions (no `hash()`); different purposes and keys
    give independent streams (numpy's SeedSequence mixes them).
    """
    entropy = [int(seed), zlib.crc32(purpose.encode()), *(int(k) for k in keys)]
    high, low = (int(x) for x in np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32))
    return ((high << 32) | low) & ((1 << 63) - 1)


def rng_for(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A numpy Generator seeded by `derive_seed(seed, purpose, *keys)`."""
    return np.random.default_rng(derive_seed(seed, purpose, *keys))


def global_batch_indices(step: int, *, num_examples: int, batch_size: int, seed: int) -> np.ndarray:
    """Example indices of the global batch for optimizer step `step` (0-based).

    Epochs are consecutive seeded permutations; a batch may straddle two epochs.
    """
    start = step * batch_size
    first_epoch, last_epoch = start // num_examples, (start + batch_size - 1) // num_examples
    order = np.concatenate([_epoch_order(seed, epoch, num_examples) for epoch in range(first_epoch, last_epoch + 1)])
    offset = start - first_epoch * num_examples
    return order[offset : offset + batch_size]


@functools.lru_cache(maxsize=8)
def _epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """One epoch's seeded permutation, drawn once per epoch rather than once per step (read-only)."""
    order = rng_for(seed, "epoch", epoch).permutation(num_examples)
    order.flags.writeable = False
    return order


def shard_for_rank(items: Sequence, *, rank: int, world_size: int) -> Sequence:
    """Contiguous slice of a global batch for one worker.

    Equal slices when the length divides by the world size; otherwise the first
    `len % world_size` ranks hold one example more (a slice may be empty).
    """
    per_rank, extra = divmod(len(items), world_size)
    start = rank * per_rank + min(rank, extra)
    return items[start : start + per_rank + (1 if rank < extra else 0)]


def reservoir_update(buffer: list, seen: int, new_items: Iterable, *, capacity: int,
                     rng: np.random.Generator) -> int:
    """Stream `new_items` through Algorithm R, in place; returns the new count of items seen.

    After n items, each one is in the buffer with probability capacity / n.
    """
    for item in new_items:
        seen += 1
        if len(buffer) < capacity:
            buffer.append(item)
        else:
            slot = int(rng.integers(seen))  # uniform on 0..seen-1
            if slot < capacity:
                buffer[slot] = item
    return seen
