"""Environment throughput: our batched numpy twins and single envs against the nearest POPGym environments.

Every figure is environment steps per second (a batch of N sub-envs stepping once is N
steps) with random actions, measured in this process with the loops of
`palimpsest.rl.throughput` (the ones `palimpsest envs --throughput` prints):

- single env: `gymnasium.make(id)` (its wrappers included) stepped one action at a time,
  reset when an episode ends (`single_rate`);
- batched: `gymnasium.make_vec(id, num_envs=N, ...)` stepped with one action per sub-env,
  timed in the steady state (`vector_rate`: once every sub-env has finished more episodes
  than a block of pre-drawn plans holds, so redrawing is paid): our twins through their
  `vector_entry_point`,
  POPGym's envs (which have no batched form) through Gymnasium's `SyncVectorEnv`
  (`vectorization_mode="sync"`), which is how a POPGym user batches them.

Rows, for each of our envs X (paired with its nearest POPGym env P, see `POPGYM_PAIRS`):

- "popgym P single"; "X single" against it (the ratio: our single env's speed over POPGym's);
- "X batch N" for each of `batches`, against "X single" (what batching buys). At batch
  `TARGET_BATCH` (8192) the row also carries the README's *absolute* target,
  ">= 1e7 steps/s" on one core: `meets` compares the row's value (not its ratio) with 1e7;
- "popgym P SyncVectorEnv 64" and "X batch 64 vs popgym" against it: the batched
  comparison at the same batch size (`POPGYM_BATCH`).

The whole measurement runs pinned to one core (`os.sched_setaffinity` on this thread, the
previous affinity restored after), so the figures are one-core figures on any machine;
numpy runs these small element-wise ops on one thread anyway. Repetitions are
interleaved (repetitions outer, cases inner) and the best of `repeats` is reported.
Without POPGym (the `bench` extra) the POPGym rows are one row saying so.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Callable

from palimpsest.bench import Row, best, compare

SECTION = "envs"
UNIT = "steps/s"
TARGET_BATCH = 8192  # the README's batch for the absolute target
TARGET_RATE = 1e7  # steps/s at TARGET_BATCH on one core: an absolute target, not a ratio
POPGYM_BATCH = 64  # POPGym through SyncVectorEnv is ~1e5 steps/s: a modest batch keeps it short
MISSING_POPGYM = "popgym not installed: pip install -e .[bench]"

# Our env (its name in palimpsest/<name>-v0) -> the nearest POPGym env: (module, class). POPGym's
# LabyrinthEscape/Explore (its navigation envs) need mazelib, which the bench extra does not install.
POPGYM_PAIRS = {
    # Hold one cue through a stretch of steps and act on it (T-maze: the corridor's cue at its junction).
    "EndlessTMaze": ("popgym.envs.repeat_first", "RepeatFirstEasy"),
    # Recall one of 4 values that later ones overwrite (RepeatPrevious: the suit of k=4 cards ago).
    "CueRewrite": ("popgym.envs.repeat_previous", "RepeatPreviousEasy"),
    # Remember what lies where on a board and fetch it by identity (Concentration: matching cards).
    "ColorCubes": ("popgym.envs.concentration", "ConcentrationEasy"),
}


def env_name(env_id: str) -> str:
    """'palimpsest/CueRewrite-v0' -> 'CueRewrite'."""
    return env_id.split("/")[-1].rsplit("-v", 1)[0]


def popgym_id(name: str) -> str:
    """The Gymnasium id POPGym registers its env class `name` under (on `import popgym`)."""
    return f"popgym-{name}-v0"


def popgym_envs() -> tuple[dict[str, str] | None, str]:
    """(our env name -> its POPGym env's class name, ""), or (None, why POPGym's envs cannot be used)."""
    if importlib.util.find_spec("popgym") is None:
        return None, MISSING_POPGYM
    try:
        for module, name in POPGYM_PAIRS.values():
            getattr(importlib.import_module(module), name)  # importing popgym registers its ids
    except (ImportError, AttributeError) as error:
        return None, f"popgym's envs unavailable ({type(error).__name__}: {error}); pip install -e .[bench]"
    return {ours: name for ours, (_, name) in POPGYM_PAIRS.items()}, ""


@contextlib.contextmanager
def one_core():
    """Pin this thread to one of the cores it may run on (the lowest), restoring its affinity after.

    Yields the core, or None where the platform cannot pin (no `os.sched_setaffinity`).
    """
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    previous = os.sched_getaffinity(0)
    core = min(previous)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, previous)


def absolute_target(row: Row, bound: float = TARGET_RATE) -> Row:
    """Give `row` an absolute target: its *value* (not a ratio) must be at least `bound` steps/s."""
    row.target = f">= {bound:g} {UNIT}".replace("e+0", "e").replace("e+", "e")  # ">= 1e7 steps/s"
    row.meets = row.value >= bound if row.value is not None else None
    return row


def cases(bench, seed: int, popgym: dict[str, str] | None) -> dict[str, Callable[[], float]]:
    """Every case's measurement (case name -> a call returning steps/s), in the order the rows are listed."""
    from palimpsest.rl.throughput import single_rate, vector_rate

    import palimpsest_envs

    measured: dict[str, Callable[[], float]] = {}
    for env_id in palimpsest_envs.ENV_IDS:
        ours = env_name(env_id)
        theirs = popgym.get(ours) if popgym else None
        if theirs:
            measured[f"popgym {theirs} single"] = lambda i=popgym_id(theirs): single_rate(i, bench.single_steps,
                                                                                           seed=seed)
        measured[f"{ours} single"] = lambda i=env_id: single_rate(i, bench.single_steps, seed=seed)
        for n in bench.batches:
            measured[f"{ours} batch {n}"] = lambda i=env_id, n=n: vector_rate(i, n, bench.batch_steps, seed=seed)
        if theirs:
            measured[f"popgym {theirs} SyncVectorEnv {POPGYM_BATCH}"] = lambda i=popgym_id(theirs): vector_rate(
                i, POPGYM_BATCH, bench.batch_steps, seed=seed, vectorization_mode="sync")
            if POPGYM_BATCH not in bench.batches:  # else rows_of reuses "X batch 64"
                measured[f"{ours} batch {POPGYM_BATCH} vs popgym"] = lambda i=env_id: vector_rate(
                    i, POPGYM_BATCH, bench.batch_steps, seed=seed)
    return measured


def rows_of(rates: dict[str, float], bench, popgym: dict[str, str] | None, core: int | None) -> list[Row]:
    """The section's rows from each case's best steps/s: ratios set and the absolute target checked."""
    import palimpsest_envs

    where = f"one core (cpu {core})" if core is not None else "not pinned to one core (no sched_setaffinity)"
    note = f"{where}, random actions, best of {bench.repeats}"
    rows = [Row(SECTION, case, round(rate, 1), UNIT, note=note) for case, rate in rates.items()]
    for env_id in palimpsest_envs.ENV_IDS:
        ours = env_name(env_id)
        theirs = popgym.get(ours) if popgym else None
        if theirs:
            compare(rows, f"{ours} single", f"popgym {theirs} single")
        for n in bench.batches:
            row = compare(rows, f"{ours} batch {n}", f"{ours} single")
            if n == TARGET_BATCH:
                absolute_target(row)
                row.note += f"; target absolute ({UNIT}), not a ratio"
        if theirs:
            versus, sync = f"{ours} batch {POPGYM_BATCH} vs popgym", f"popgym {theirs} SyncVectorEnv {POPGYM_BATCH}"
            if versus not in rates:  # measured among `batches`: the same figure, listed after POPGym's
                same = rates[f"{ours} batch {POPGYM_BATCH}"]
                at = [row.case for row in rows].index(sync) + 1
                rows.insert(at, Row(SECTION, versus, round(same, 1), UNIT, note=note))
            compare(rows, versus, sync)
    for row in rows:
        if row.case.startswith("popgym ") and "SyncVectorEnv" in row.case:
            row.note += "; gymnasium.make_vec(vectorization_mode='sync')"
    return rows


def measure(spec, workdir: Path, use_ray: bool) -> list[Row]:
    """Section "envs": steps/s of each env single and batched, and of its nearest POPGym env stepped the same way.

    Runs in this process (Ray plays no part: `use_ray` is ignored), pinned to one core.
    """
    bench = spec.benchmark
    popgym, missing = popgym_envs() if bench.popgym else (None, "")
    measured = cases(bench, spec.seed, popgym)
    runs: dict[str, list[float]] = {case: [] for case in measured}
    with one_core() as core:
        for _ in range(bench.repeats):  # interleaved: a slow spell of the machine hits every case alike
            for case, rate in measured.items():
                runs[case].append(rate())
    rows = rows_of({case: best(values, higher_is_better=True) for case, values in runs.items()}, bench, popgym, core)
    if missing:
        rows.append(Row(SECTION, "popgym", None, UNIT, note=missing))
    return rows
