"""RLlib throughput: sampled env steps/s of each memory agent with PPO, against the memoryless mlp (the cost of memory).

Each agent's algorithm is built as a `kind: rl` trial builds it: the bench's fields make a
one-seed rl job (`runners/rl.prepare` matches the agent's width to the parameter budget),
the rest of the PPO settings are the quick CPU benchmark's (`jobs/rl/quick_cpu.yaml`), and
`rl/ppo.build_config(trial).build_algo()` builds it, with `num_env_runners: 0`: sampling and
learning both run in this process, on one torch thread (as a trial does on its one CPU).

An iteration samples `train_batch_size` env steps and learns on them (PPO's `train()`).
The first iteration is warm-up; the figure is the env steps RLlib reports sampled
(`result["env_runners"]["num_env_steps_sampled"]`) over the next `iterations - 1`
iterations, divided by their wall time (`time.perf_counter` around `train()`), so it
includes learning: what a trial's step budget costs. Build and stop are timed apart.

The sampling share is recovered from RLlib's own timers: `result["timers"]` holds
exponential moving averages (RLlib's default coefficient, 0.01) that the warm-up
dominates, so each iteration's sampling and training-step times are taken back out of
successive averages. It is reported only when the recovered training-step times agree
with the measured walls (else left out, with a note).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path

from palimpsest.bench import Row, compare

SECTION = "rllib"
UNIT = "env steps/s"
BASELINE = "mlp"  # the memoryless agent

# The PPO settings the bench does not set: the quick CPU benchmark's (jobs/rl/quick_cpu.yaml).
PPO = {"lr": 1.0e-2, "num_epochs": 8, "minibatch_size": 128, "max_seq_len": 16}

# RLlib 2.60's timers (`result["timers"]`) are EMAs with this coefficient (EmaStats' default).
TIMER_EMA = 0.01
TIMER_TOLERANCE = 0.15  # recovered training-step time against the measured wall, relative


def rl_document(bench, seed: int = 0) -> dict:
    """The one-seed `kind: rl` job whose trials the bench builds (one per agent)."""
    return {"kind": "rl", "name": "bench-rllib", "seed": seed, "seeds": 1,
            "agents": list(bench.agents), "envs": [{"id": bench.env, "params": dict(bench.env_params)}],
            "parameters": bench.parameters,
            "ppo": {**PPO, "minibatch_size": min(PPO["minibatch_size"], bench.train_batch_size),
                    "train_batch_size": bench.train_batch_size, "num_env_runners": 0,
                    "num_envs_per_env_runner": bench.num_envs_per_env_runner}}


def trials(bench, seed: int = 0) -> list[dict]:
    """Each agent's trial, width matched to the parameter budget (as `palimpsest run` prepares them)."""
    from palimpsest.runners import rl
    from palimpsest.spec import parse_spec

    return rl.prepare(parse_spec(rl_document(bench, seed), origin="bench rllib")).trials


def _recovered(averages: list[float]) -> list[float]:
    """Per-iteration values out of successive EMAs (the first average is the first value)."""
    values = [averages[0]]
    for previous, current in zip(averages, averages[1:]):
        values.append((current - (1.0 - TIMER_EMA) * previous) / TIMER_EMA)
    return values


def sampling_share(timers: list[dict], walls: list[float], timed: slice) -> float | None:
    """Sampling's share of the timed iterations' training steps, from RLlib's timers; None when they do not
    check out against the measured walls (another averaging than the one assumed)."""
    try:
        sampling = _recovered([float(t["env_runner_sampling_timer"]) for t in timers])[timed]
        steps = _recovered([float(t["training_step"]) for t in timers])[timed]
    except (KeyError, TypeError, ValueError):
        return None
    for step, wall in zip(steps, walls[timed]):
        if abs(step - wall) > TIMER_TOLERANCE * wall:
            return None
    if any(s < 0 for s in sampling) or sum(steps) <= 0:
        return None
    return sum(sampling) / sum(steps)


@contextlib.contextmanager
def quiet_ray():
    """Ray started for the section if it is not up (and stopped after), RLlib's and Tune's loggers at ERROR:
    RLlib warns at every build (new API stack, deprecations), and one row per case is the output."""
    import ray

    from palimpsest.ray_connection import init_ray

    owned = not ray.is_initialized()
    if owned:
        init_ray()
    loggers = {name: logging.getLogger(name) for name in ("ray.rllib", "ray.tune", "ray.train")}
    levels = {name: logger.level for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(levels[name])
        if owned:
            ray.shutdown()


def measure_agent(trial: dict, iterations: int) -> dict:
    """Build the trial's algorithm, run `iterations` PPO iterations (the first is warm-up), stop it."""
    import torch

    from palimpsest.rl.ppo import build_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a trial: its learner has one CPU
    try:
        started = time.perf_counter()
        with warnings.catch_warnings():  # RLlib re-registers its env wrapper at every build, and gymnasium says so
            warnings.filterwarnings("ignore", message=".*Overriding environment rllib-")
            algo = build_config(trial).build_algo()
        build_s = time.perf_counter() - started
        try:
            walls, sampled, timers = [], [], []
            for _ in range(iterations):
                began = time.perf_counter()
                result = algo.train()
                walls.append(time.perf_counter() - began)
                steps = int(result.get("env_runners", {}).get("num_env_steps_sampled", 0))
                if steps <= 0:
                    raise RuntimeError(f"{trial['agent']}: RLlib reported no sampled env steps for an iteration")
                sampled.append(steps)
                timers.append(dict(result.get("timers", {})))
            lifetime = result.get("env_runners", {}).get("num_env_steps_sampled_lifetime")
        finally:
            began = time.perf_counter()
            algo.stop()
            stop_s = time.perf_counter() - began
    finally:
        torch.set_num_threads(threads)
    timed = slice(1, None)
    wall = sum(walls[timed])
    return {"env_steps": sum(sampled[timed]), "wall_s": wall, "steps_per_s": sum(sampled[timed]) / wall,
            "warmup_env_steps": sampled[0], "warmup_s": walls[0], "iteration_s": walls,
            "lifetime_env_steps": int(lifetime) if lifetime is not None else None,
            "sampling_share": sampling_share(timers, walls, timed), "build_s": build_s, "stop_s": stop_s}


def measure(spec, workdir: Path, use_ray: bool) -> list[Row]:
    """Section "rllib": one row per agent, its sampled env steps/s against the mlp's."""
    bench = spec.benchmark
    if not use_ray:
        return [Row(SECTION, "PPO env steps/s per agent", None, UNIT, note="needs Ray (run without --no-ray)")]
    prepared = trials(bench, spec.seed)
    rows: list[Row] = []
    with quiet_ray():
        for trial in prepared:
            figures = measure_agent(trial, bench.iterations)
            share = figures["sampling_share"]
            note = (f"hidden {trial['hidden']}, {trial['parameters']:,} parameters; "
                    f"{figures['env_steps']} env steps in {bench.iterations - 1} iterations after 1 warm-up; "
                    + (f"sampling {share:.0%} of the time" if share is not None else "sampling share unknown"))
            rows.append(Row(SECTION, trial["agent_label"], round(figures["steps_per_s"], 1), UNIT, note=note, extra={
                "hidden": trial["hidden"], "parameters": trial["parameters"], "env": trial["env_label"],
                "env_steps": figures["env_steps"], "iterations": bench.iterations - 1,
                "wall_s": round(figures["wall_s"], 3), "warmup_s": round(figures["warmup_s"], 3),
                "warmup_env_steps": figures["warmup_env_steps"], "lifetime_env_steps": figures["lifetime_env_steps"],
                "iteration_s": [round(w, 3) for w in figures["iteration_s"]],
                "sampling_share": round(share, 4) if share is not None else None,
                "build_s": round(figures["build_s"], 3), "stop_s": round(figures["stop_s"], 3),
                "train_batch_size": bench.train_batch_size,
                "num_envs_per_env_runner": bench.num_envs_per_env_runner}))
    cases = {row.case for row in rows}
    for row in rows:
        if BASELINE in cases and row.case != BASELINE:
            compare(rows, row.case, BASELINE)
        elif BASELINE not in cases:
            row.note += f"; no ratio: {BASELINE} (the memoryless baseline) is not among the agents"
    return rows
