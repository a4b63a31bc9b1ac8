"""One benchmark trial as a Ray Tune function trainable: PPO until the step budget, greedy evaluation
every K iterations, the best module by success rate kept (the paper's protocol), then that module
scored on fresh test episodes of the training setting and of each held-out setting (the headline).

Every evaluation reports a checkpoint holding the algorithm (to resume), the best module's
weights and `progress.json` (evaluations so far, counters), so a trial that stops — Ctrl-C,
a lost node — resumes where its last evaluation left it. The last report's checkpoint also
holds `best/`, the best module as an RLModule checkpoint (`RLModule.from_checkpoint`).
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

from palimpsest.rl.ppo import build_config, greedy_evaluation, score

PROGRESS = "progress.json"
BEST_WEIGHTS = "best_module.pt"


def run_trial(config: dict) -> None:
    """The Tune function trainable of the benchmark's trials."""
    train_trial(config)


def train_trial(config: dict, final_extra: dict | None = None) -> dict:
    """Train one trial, reporting each evaluation to Tune (the last with `final_extra` added); returns its
    progress (evaluations, best, test)."""
    import logging

    import torch
    from ray import tune

    # Tune and RLlib log every checkpoint and setting at INFO/WARN; the driver prints one line per evaluation.
    for name in ("ray.tune", "ray.train", "ray.rllib"):
        logging.getLogger(name).setLevel(logging.ERROR)

    trial = config["trial"]
    budget, evaluation = trial["budget"], trial["evaluation"]
    # The learner runs in this process on the trial's one CPU: torch's default of a thread per
    # core would have concurrent trials fight over every core.
    torch.set_num_threads(1)
    algo = build_config(trial).build_algo()
    progress = {"iteration": 0, "env_steps": 0, "wall_s": 0.0, "evaluations": [], "best": None}
    best_state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            algo.restore_from_path(str(Path(folder) / "algo"))
            progress = json.loads((Path(folder) / PROGRESS).read_text())
            if (Path(folder) / BEST_WEIGHTS).is_file():
                best_state = torch.load(Path(folder) / BEST_WEIGHTS, weights_only=False)
            if progress["best"] is not None and best_state is None:
                raise RuntimeError(f"{folder}: the checkpoint names a best evaluation but holds no {BEST_WEIGHTS}")
        if progress.get("test") is not None:  # stopped after its final report: finished, nothing to train
            best = progress["best"]
            tune.report({"iteration": progress["iteration"], "env_steps": progress["env_steps"],
                         "success_rate": best["success_rate"], "mean_return": best["mean_return"],
                         "wall_s": round(progress["wall_s"], 3), **final_metrics(progress), "finished": True,
                         **(final_extra or {})},
                        checkpoint=checkpoint)
            _stop(algo)
            return progress
    try:
        while True:
            started = time.perf_counter()
            result = algo.train()
            runners = result.get("env_runners", {})
            progress["iteration"] += 1
            sampled = int(runners.get("num_env_steps_sampled", 0))
            if sampled <= 0:  # a budget counted in steps would never be reached
                raise RuntimeError("RLlib reported no sampled environment steps for this iteration")
            progress["env_steps"] += sampled
            finished = progress["env_steps"] >= budget["env_steps"]
            metrics = {"iteration": progress["iteration"], "env_steps": progress["env_steps"],
                       "train_success_rate": runners.get("success_rate"),
                       "train_return_mean": runners.get("episode_return_mean")}
            due = progress["iteration"] % evaluation["every"] == 0
            if due or finished:
                scores = greedy_evaluation(algo.get_module(), trial["env_id"], trial["env_params"],
                                           episodes=evaluation["episodes"], seed=trial["eval_seed"])
                point = {"iteration": progress["iteration"], "env_steps": progress["env_steps"],
                         "wall_s": None, **scores, "train_success_rate": metrics["train_success_rate"]}
                best = progress["best"]
                if best is None or score(scores) > score(best):
                    # Strictly better only: of equal rates the earliest (fewest steps) stays best.
                    progress["best"] = point
                    best_state = copy.deepcopy(algo.get_module().get_state())
                stop_at = budget.get("stop_success")
                finished = finished or (stop_at is not None and progress["best"]["success_rate"] is not None
                                        and progress["best"]["success_rate"] >= stop_at)
            progress["wall_s"] += time.perf_counter() - started
            if due or finished:
                point["wall_s"] = round(progress["wall_s"], 3)
                progress["evaluations"].append(point)
                metrics.update({"success_rate": point["success_rate"], "mean_return": point["mean_return"],
                                "best_success_rate": progress["best"]["success_rate"]})
                metrics["wall_s"] = round(progress["wall_s"], 3)
                with tempfile.TemporaryDirectory() as folder:
                    _save(algo, progress, best_state, Path(folder), final=finished, trial=trial)
                    if finished:
                        metrics.update({**final_metrics(progress), **(final_extra or {})})
                    tune.report({**metrics, "finished": finished}, checkpoint=tune.Checkpoint.from_directory(folder))
            # (between evaluations nothing is reported: a search's scheduler compares evaluations)
            if finished:
                return progress
    finally:
        _stop(algo)


def final_metrics(progress: dict) -> dict:
    """A finished trial's figures: the best evaluation, and the best module on fresh test episodes of the training
    setting and of each held-out setting (`held_out/<label>/success_rate`)."""
    metrics = {"best_success_rate": progress["best"]["success_rate"],
               "best_mean_return": progress["best"]["mean_return"],
               "test_success_rate": progress["test"]["success_rate"], "test_mean_return": progress["test"]["mean_return"]}
    for label, scores in (progress.get("held_out") or {}).items():
        metrics[f"held_out/{label}/success_rate"] = scores["success_rate"]
    return metrics


def _stop(algo) -> None:
    """Stop the algorithm's actors; a failure here must not turn a finished trial into a failed one."""
    import logging

    try:
        algo.stop()
    except Exception as error:  # noqa: BLE001 - the trial's results are already reported
        logging.getLogger(__name__).warning("stopping the algorithm failed: %s", error)


def _save(algo, progress: dict, best_state, folder: Path, *, final: bool, trial: dict) -> None:
    import torch

    algo.save_to_path(str(folder / "algo"))
    if best_state is not None:
        torch.save(best_state, folder / BEST_WEIGHTS)
    if final:  # the best module on its own, loadable without the algorithm, plus a held-out test of it
        module = algo.get_module()
        current = copy.deepcopy(module.get_state())
        module.set_state(best_state)
        module.save_to_path(str(folder / "best"))
        episodes = trial["evaluation"]["test_episodes"]
        progress["test"] = greedy_evaluation(module, trial["env_id"], trial["env_params"], episodes=episodes,
                                             seed=trial["test_seed"])
        # Held-out settings: the same chosen module, fresh episodes of another setting (their own seeds).
        progress["held_out"] = {h["label"]: greedy_evaluation(module, trial["env_id"], h["env_params"],
                                                              episodes=episodes, seed=h["seed"])
                                for h in trial.get("held_out", [])}
        module.set_state(current)
    (folder / PROGRESS).write_text(json.dumps(progress))
