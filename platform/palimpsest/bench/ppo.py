"""PPO training throughput: env steps/s with learning, ours against a bare PyTorch loop and against RLlib on single envs.

For each agent (width matched to the parameter budget, as `palimpsest run` prepares a trial),
one iteration samples `train_batch_size` env steps and learns on them; the figure is env
steps over the wall time of all iterations but the first (warm-up), one torch thread:

- "<agent> ours": a benchmark trial's algorithm (`rl/ppo.build_config`): RLlib's PPO with
  the env runner stepping the env's batched numpy twin (`gym_env_vectorize_mode =
  "vector_entry_point"`), `num_envs_per_env_runner` sub-envs, sampling and learning in one
  process (`bench/rllib.measure_agent`);
- "<agent> RLlib single envs": the same, the runner stepping single envs through Gymnasium's
  SyncVectorEnv (RLlib's default, and this benchmark's path before the twins);
- "<agent> bare PyTorch loop": `bench/ppo_loop.train`, the same agent, twin, batch, epochs
  and loss with nothing around them (the ceiling: what the maths costs here);
- "<agent> former quick settings": RLlib on single envs at the quick job's former PPO
  settings (8 envs, batch 512, 8 epochs of minibatch 128): the trial throughput the
  benchmark had before the twins, for the "10× today's" goal.

Ratios: ours against the bare loop (target ≥ 0.5) and against the former quick settings
(target ≥ 10). Repetitions are interleaved, the best kept.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

from palimpsest.bench import Row, best, compare

SECTION = "ppo"
UNIT = "env steps/s"
FORMER = {"num_envs_per_env_runner": 8, "train_batch_size": 512, "num_epochs": 8, "minibatch_size": 128}


def trials(bench, seed: int = 0) -> list[dict]:
    """Each agent's trial as `palimpsest run` would prepare it, with the bench's PPO settings."""
    from palimpsest.runners import rl
    from palimpsest.spec import parse_spec

    document = {"kind": "rl", "name": "bench-ppo", "seed": seed, "seeds": 1, "agents": list(bench.agents),
                "envs": [{"id": bench.env, "params": dict(bench.env_params)}], "parameters": bench.parameters,
                "ppo": {"lr": bench.lr, "num_epochs": bench.num_epochs, "minibatch_size": bench.minibatch_size,
                        "train_batch_size": bench.train_batch_size, "max_seq_len": bench.max_seq_len,
                        "num_env_runners": 0, "num_envs_per_env_runner": bench.num_envs}}
    return rl.prepare(parse_spec(document, origin="bench ppo")).trials


def _variants(trial: dict) -> dict[str, tuple[str, dict]]:
    """case suffix → (runner, trial) for one agent."""
    single = dict(copy.deepcopy(trial), vectorize="sync")
    former = dict(copy.deepcopy(single))
    former["ppo"] = {**former["ppo"], **FORMER}
    return {"ours": ("rllib", trial), "RLlib single envs": ("rllib", single), "bare PyTorch loop": ("bare", trial),
            "former quick settings": ("rllib", former)}


def measure(spec, workdir: Path, use_ray: bool) -> list[Row]:
    """Section "ppo": per agent, four rows (see the module docstring), the ratios on "ours"."""
    bench = spec.benchmark
    if not use_ray:
        return [Row(SECTION, "PPO env steps/s with learning", None, UNIT, note="needs Ray (run without --no-ray)")]
    import torch

    from palimpsest.bench import ppo_loop
    from palimpsest.bench.rllib import measure_agent, quiet_ray

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    figures: dict[str, list[dict]] = {}
    prepared = trials(bench, spec.seed)
    try:
        with quiet_ray():
            for _ in range(bench.repeats):  # interleaved: repetitions outer, cases inner
                for trial in prepared:
                    for suffix, (runner, variant) in _variants(trial).items():
                        with warnings.catch_warnings():
                            warnings.filterwarnings("ignore", message=".*Overriding environment rllib-")
                            result = (measure_agent(variant, bench.iterations) if runner == "rllib"
                                      else ppo_loop.train(variant, bench.iterations, seed=spec.seed))
                        result.pop("module", None)
                        figures.setdefault(f"{trial['agent_label']} {suffix}", []).append(result)
    finally:
        torch.set_num_threads(threads)
    rows = []
    for trial in prepared:
        agent = trial["agent_label"]
        for suffix, (_, variant) in _variants(trial).items():
            case = f"{agent} {suffix}"
            runs = figures[case]
            value = best([r["steps_per_s"] for r in runs], higher_is_better=True)
            ppo = variant["ppo"]
            rows.append(Row(SECTION, case, round(value, 1), UNIT, note=(
                f"hidden {trial['hidden']}; {ppo['num_envs_per_env_runner']} envs, batch {ppo['train_batch_size']}, "
                f"{ppo['num_epochs']} epochs of {ppo['minibatch_size']}, sequences of {variant['max_seq_len']}"),
                extra={"runs": [round(r["steps_per_s"], 1) for r in runs], "agent": agent,
                       "hidden": trial["hidden"], "env_steps": runs[0]["env_steps"]}))
        ours = compare(rows, f"{agent} ours", f"{agent} bare PyTorch loop", target=">= 0.5")
        compare(rows, f"{agent} RLlib single envs", f"{agent} ours")
        # The "10× today's" goal: ours again, against the former trial settings (a row can hold one ratio).
        rows.append(Row(SECTION, f"{agent} ours, against the former settings", ours.value, UNIT, note=ours.note))
        compare(rows, rows[-1].case, f"{agent} former quick settings", target=">= 10")
    return rows
