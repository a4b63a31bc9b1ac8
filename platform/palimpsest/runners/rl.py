"""`kind: rl` — the memory benchmark: every agent × environment setting × seed, PPO trials through Ray Tune.

prepare(spec) -> the trials: each agent's width matched to the parameter budget for each
                 environment's observation and action sizes (`rl/sizing.py`), seeds for
                 training, evaluation and the held-out test;
run(...)      -> one Tune experiment (`tune.with_resources`: what RLlib asks for each
                 trial's config), trials in parallel as the cluster's CPUs and GPUs allow; a rerun of the same
                 folder (`run --resume`) restores the experiment, finished trials stay done and
                 unfinished ones resume from their last evaluation. Then results.csv, the best
                 module per trial (checkpoints/<trial>/), metrics.jsonl (the learning curves)
                 and summary.json.

Selection is the paper's protocol: greedy evaluation every `evaluation.every` iterations over
`evaluation.episodes` episodes, and the module of the best evaluation is the trial's (its
checkpoint). The headline is that module's success on `evaluation.test_episodes` fresh test
episodes (`test_success_rate`), since the best of several evaluations on the same episodes
is optimistic (it stays as `best_eval_success_rate`), and on each held-out setting's fresh
episodes. Over seeds: the interquartile mean with a 95% stratified bootstrap interval
(rliable's protocol, `metrics/rliable.py`).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
import time
from pathlib import Path

from palimpsest import progress as ui
from palimpsest.rl.plan import PreparedRL, plan_trials
from palimpsest.atomic import atomic_write_text
from palimpsest.run_folder import RunFolder
from palimpsest.spec.rl import RLJob
from palimpsest.storage import join

NEEDS_RAY = True  # RLlib and Tune run on Ray: `run --no-ray` is refused
RESULT_COLUMNS = ("agent", "env", "settings", "seed", "test_success_rate", "best_eval_success_rate",
                  "test_first_stage", "test_later_stages", "test_mean_return", "env_steps", "best_env_steps", "wall_s",
                  "parameters", "hidden")  # then one held_out:<label> column per held-out setting


def prepare(spec: RLJob, *, saved_tokenizer=None) -> PreparedRL:
    """Every trial's configuration, widths matched to the parameter budget (`rl/plan.py`).

    Raises:
        DataError: an agent's memory arguments do not build.
    """
    return plan_trials(spec)


def trial_resources(config: dict):
    """The placement group Tune reserves for one trial (`config["trial"]`): RLlib's own request."""
    from ray import tune

    from palimpsest.rl.ppo import trial_bundles

    return tune.PlacementGroupFactory(trial_bundles(config["trial"]))


def run(spec: RLJob, prepared: PreparedRL, folder: RunFolder, *, use_ray: bool = True) -> dict:
    import os

    # Trials checkpoint at every evaluation (seconds apart on small tasks), which makes Tune snapshot
    # its experiment state often; that is cheap here and the warning about it is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune

    from palimpsest.rl.ppo import trial_bundles
    from palimpsest.rl.trial import run_trial
    from palimpsest.scaling import Need, capacity, describe, trials_at_once

    started = time.perf_counter()
    storage = spec.storage_path or str(folder.path / "ray")  # the spec holds it absolute, or a URI (s3://, …)
    # Each trial holds what RLlib asks for its config (its learner's CPU or GPU, its env runners).
    trainable = tune.with_resources(run_trial, trial_resources)
    # Named after the run folder: a storage_path shared by several runs keeps them apart, and a
    # resumed folder finds its own experiment again.
    name = folder.path.name
    experiment = join(storage, name)  # (a URI keeps its options at the end)
    exists = tune.Tuner.can_restore(experiment)
    if exists and not folder.read_summary().get("resumed"):
        raise RuntimeError(f"{experiment} already holds a Tune experiment of an earlier run folder named "
                           f"{name}; resume that one (run --resume), or give this run another --out or storage_path")
    bundles = trial_bundles(prepared.trials[0])
    at_once, limit = trials_at_once(Need(tuple(bundles), ""), capacity())
    if spec.max_concurrent_trials:
        at_once = min(at_once, spec.max_concurrent_trials)
    if exists:  # a rerun of this folder: finished trials stay finished
        ui.say(f"resuming the Tune experiment in {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
    else:
        ui.say(f"{len(prepared.trials)} trials ({len(spec.agents)} agents × {len(spec.envs)} environments "
               f"× {spec.seeds} seeds), each holding {describe(bundles)}; {at_once} at once on this cluster"
               + (f" ({limit} bound)" if limit and at_once < len(prepared.trials) else ""))
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(prepared.trials)},
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent_trials,
                                        trial_name_creator=lambda t: t.config["trial"]["label"],
                                        trial_dirname_creator=lambda t: t.config["trial"]["label"]),
            run_config=tune.RunConfig(
                name=name, storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[_progress_callback(len(prepared.trials), name)], verbose=0),
        )
    outcomes = {result.config["trial"]["label"]: result for result in tuner.fit()}
    unfinished = [t["label"] for t in prepared.trials
                  if t["label"] not in outcomes or outcomes[t["label"]].error is not None
                  or not (outcomes[t["label"]].metrics or {}).get("finished")]
    errors = {label: (str(outcomes[label].error).splitlines() or [type(outcomes[label].error).__name__])[0]
              for label in unfinished if label in outcomes and outcomes[label].error is not None}
    if errors:
        first = next(iter(errors.items()))
        raise RuntimeError(f"{len(errors)} of {len(prepared.trials)} trials failed (first: {first[0]}: {first[1]}); "
                           "finished trials are kept")
    if unfinished:  # Tune stopped early without errors: an interrupt (Ctrl-C) reached its own handler
        raise KeyboardInterrupt(f"{len(unfinished)} trials unfinished")
    rows, curves = [], []
    for trial in prepared.trials:
        progress = _collect(outcomes[trial["label"]], folder.checkpoints / trial["label"])
        best, test = progress["best"], progress["test"]
        rows.append({
            "agent": trial["agent_label"], "env": trial["env"], "settings": trial["settings"], "seed": trial["seed"],
            "test_success_rate": test["success_rate"], "best_eval_success_rate": best["success_rate"],
            "test_first_stage": test.get("first_stage"), "test_later_stages": test.get("later_stages"),
            "test_mean_return": round(test["mean_return"], 6), "best_eval_mean_return": round(best["mean_return"], 6),
            "env_steps": progress["env_steps"], "best_env_steps": best["env_steps"],
            "wall_s": round(progress["wall_s"], 3), "parameters": trial["parameters"], "hidden": trial["hidden"],
            "env_label": trial["env_label"], "trial": trial["label"],
            "held_out": {label: {k: scores.get(k) for k in ("success_rate", "first_stage", "later_stages",
                                                            "mean_return")}
                         for label, scores in (progress.get("held_out") or {}).items()},
            "eval_seed": trial["eval_seed"], "test_seed": trial["test_seed"]})
        for point in progress["evaluations"]:
            # The greedy evaluation's figures, and the training episodes' own success (split "train").
            for metric, split in (("success_rate", "eval"), ("mean_return", "eval"), ("train_success_rate", "train")):
                if point.get(metric) is not None:
                    curves.append({"step": point["env_steps"], "task": trial["label"], "split": split,
                                   "metric": metric, "value": point[metric], "agent": trial["agent_label"],
                                   "env": trial["env_label"], "seed": trial["seed"],
                                   "iteration": point["iteration"], "wall_s": point["wall_s"]})
    folder.write_metrics(curves)
    _write_csv(folder.path / "results.csv", rows)
    return {
        "status": "ok", "kind": "rl", "name": spec.name, "seed": spec.seed,
        "results": rows,
        "table": success_table(rows),
        "aggregate": aggregate_table(rows),
        "agents": agent_sizes(prepared.trials),
        "trials": len(rows),
        "cost": {"wall_s": round(time.perf_counter() - started, 3), "env_steps": sum(r["env_steps"] for r in rows),
                 "trial_wall_s": round(sum(r["wall_s"] for r in rows), 3)},
    }


def _progress_callback(total: int, name: str = "rl"):
    """One line per evaluation and per trial end, in place of Tune's status tables; a display's trials row.

    `total`: the benchmark's trials (Tune creates them as it goes: its list grows while they run).
    """
    from ray import tune

    class Progress(tune.Callback):
        """One line per evaluation and per trial end, in place of Tune's status tables."""

        key = f"{name} trials"

        def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
            ui.begin(self.key, "trials", total)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("success_rate") is not None:
                label = trial.config['trial']['label']
                ui.say(f"{label}: {result['env_steps']} env steps, greedy success "
                       f"{result['success_rate']:.2f} (best {result['best_success_rate']:.2f}), "
                       f"{result['wall_s']:.0f} s")
                ui.update(self.key, note=f"{label}: success {result['success_rate']:.2f}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            done = sum(t.status == "TERMINATED" or t is trial for t in trials)  # (its status is set after)
            ui.say(f"trial {trial.config['trial']['label']} finished ({done}/{total})")
            ui.update(self.key, done=done)

        def on_trial_error(self, iteration, trials, trial, **info):
            ui.say(f"trial {trial.config['trial']['label']} failed: see {trial.local_path}")

        def on_experiment_end(self, trials, **info):
            ui.end(self.key)

    return Progress()


def _collect(result, target: Path) -> dict:
    """A finished trial's progress, and its best module copied into the run folder."""
    from palimpsest.rl.trial import PROGRESS

    if result.checkpoint is None:
        raise RuntimeError(f"trial {result.config['trial']['label']} finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        progress = json.loads((Path(directory) / PROGRESS).read_text())
        best = Path(directory) / "best"
        if not best.is_dir():
            raise RuntimeError(f"trial {result.config['trial']['label']}: its last checkpoint has no best module")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(best, target)
    return progress


def _write_csv(path: Path, rows: list[dict]) -> None:
    held = list(dict.fromkeys(label for row in rows for label in row["held_out"]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*RESULT_COLUMNS, *(f"held_out:{h}" for h in held)],
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, **{f"held_out:{h}": row["held_out"].get(h, {}).get("success_rate") for h in held}}
                     for row in rows)
    atomic_write_text(path, buffer.getvalue())


def agent_sizes(trials: list[dict]) -> dict:
    """agent → its cell, arguments, and per environment setting its width and parameter count (the
    width is matched per setting: observation and action sizes differ)."""
    sizes: dict = {}
    for t in trials:
        entry = sizes.setdefault(t["agent_label"], {"agent": t["agent"], "memory": t["memory"], "sizes": {}})
        entry["sizes"][t["env_label"]] = {"hidden": t["hidden"], "parameters": t["parameters"]}
    return sizes


def _headline(scores: dict) -> tuple[str, float]:
    """(metric, value) of one test: the success rate, or the mean return of an env that reports no success."""
    if scores.get("success_rate") is None:
        return "return", scores["mean_return"]
    return "success", scores["success_rate"]


def setting_scores(rows: list[dict]) -> dict:
    """agent → setting → {metric, values (one per seed), best_eval, first_stage, later_stages}; the settings are each
    env label (its fresh test episodes) and `<env label>/<held-out label>` for each held-out setting."""
    cells: dict = {}

    def add(agent, setting, scores, best=None):
        metric, value = _headline(scores)
        cell = cells.setdefault(agent, {}).setdefault(setting, {"metric": metric, "values": [], "best_eval": [],
                                                                "first_stage": [], "later_stages": []})
        cell["values"].append(value)
        cell["best_eval"].append(best)
        cell["first_stage"].append(scores.get("first_stage"))
        cell["later_stages"].append(scores.get("later_stages"))

    for row in rows:
        test = {"success_rate": row["test_success_rate"], "mean_return": row["test_mean_return"],
                "first_stage": row["test_first_stage"], "later_stages": row["test_later_stages"]}
        add(row["agent"], row["env_label"], test,
            row["best_eval_success_rate"] if row["best_eval_success_rate"] is not None else row["best_eval_mean_return"])
        for label, scores in row["held_out"].items():
            add(row["agent"], f"{row['env_label']}/{label}", scores)
    return cells


def success_table(rows: list[dict]) -> dict:
    """agent → setting → the headline over seeds: the interquartile mean of the chosen module's fresh-episode test
    success (or return) with its 95% bootstrap interval (rliable's protocol, `metrics/rliable.py`), the mean, and
    beside them the mean of the best evaluation (max over evaluations on the same episodes: optimistic) and of the
    first-stage and later-stage success (retention against rewriting)."""
    from palimpsest.metrics.rliable import stratified_iqm

    def mean(values):
        kept = [v for v in values if v is not None]
        return round(statistics.fmean(kept), 4) if kept else None

    table: dict = {}
    for agent, settings in setting_scores(rows).items():
        for setting, cell in settings.items():
            stats = stratified_iqm([cell["values"]])
            table.setdefault(agent, {})[setting] = {
                "metric": cell["metric"], "iqm": _round(stats["iqm"]), "interval": _round(stats["interval"]),
                "mean": mean(cell["values"]), "seeds": len(cell["values"]), "values": cell["values"],
                "best_eval_mean": mean(cell["best_eval"]), "first_stage": mean(cell["first_stage"]),
                "later_stages": mean(cell["later_stages"])}
    return table


def aggregate_table(rows: list[dict]) -> dict:
    """agent → the IQM of test success over every training setting's seeds, with the stratified bootstrap interval
    (settings resampled apart), and the same over the held-out settings; envs that report no success are left out."""
    from palimpsest.metrics.rliable import stratified_iqm

    result: dict = {}
    for agent, settings in setting_scores(rows).items():
        for part, keep in (("training", lambda s: "/" not in s), ("held_out", lambda s: "/" in s)):
            tasks = [c["values"] for s, c in settings.items() if keep(s) and c["metric"] == "success"]
            if tasks:
                stats = stratified_iqm(tasks)
                result.setdefault(agent, {})[part] = {"iqm": _round(stats["iqm"]), "interval": _round(stats["interval"]),
                                                      "settings": len(tasks), "runs": stats["runs"]}
    return result


def _round(value):
    if value is None:
        return None
    if isinstance(value, list):
        return [round(v, 4) for v in value]
    return round(value, 4)


# ----------------------------------------------------------------------------- a search over an rl job

def search_trial(spec: RLJob, folder_path: Path) -> None:
    """A trial of a search over an rl job (`palimpsest tune`): the benchmark's PPO trial (its reports are
    Tune's), then a small run folder."""
    from palimpsest.rl.trial import train_trial

    from palimpsest.spec import dump_spec

    (trial,) = prepare(spec).trials
    resumed = (folder_path / "spec.yaml").is_file()
    folder = RunFolder(folder_path) if resumed else RunFolder.create(spec.name, folder_path)
    folder.start(kind="rl-trial", name=spec.name, seed=spec.seed, spec_yaml=None if resumed else dump_spec(spec),
                 resumed=resumed)
    progress = train_trial({"trial": trial}, final_extra={"run_folder": str(folder.path)})
    best = progress["best"]
    folder.write_summary({"status": "ok", "kind": "rl-trial", "name": spec.name, "seed": spec.seed,
                          "best_success_rate": best["success_rate"], "best_mean_return": best["mean_return"],
                          "test_success_rate": progress["test"]["success_rate"], "best_env_steps": best["env_steps"],
                          "test": progress["test"], "held_out": progress.get("held_out") or {},
                          "env_steps": progress["env_steps"], "evaluations": progress["evaluations"],
                          "agent": trial["agent"], "hidden": trial["hidden"], "parameters": trial["parameters"],
                          "env": trial["env_label"], "cost": {"wall_s": round(progress["wall_s"], 3)}})


def search_resources(spec: RLJob):
    """What Tune reserves for each trial of a search: RLlib's own request for the first trial's config (a
    search cannot vary a trial's resources)."""
    (first, *_) = prepare(spec).trials
    return trial_resources({"trial": first})


def search_results(spec: RLJob, folder: RunFolder, finished: list[dict], metrics: list[str], modes: list[str]) -> dict:
    """What a finished search over an rl job adds to its summary: each agent's best PPO settings, when the
    search is over agents (`agent_ppo.yaml`, what `agent_ppo:` in an rl job reads)."""
    if AGENT_PATH not in spec.tune.space:
        return {}
    document = write_agent_ppo(folder.path / AGENT_PPO_FILE, finished, metrics[0], modes[0])
    ui.say(f"each agent's best PPO settings: {folder.path / AGENT_PPO_FILE} (agent_ppo: in an rl job)")
    return {"agent_ppo": document}


AGENT_PATH = "agents.0.name"  # an rl search over this path tunes each agent apart
AGENT_PPO_FILE = "agent_ppo.yaml"


def write_agent_ppo(path: Path, rows: list[dict], metric: str, mode: str) -> dict:
    """agent → the searched ppo.* values of its best finished trial, written to `path` (what `agent_ppo:` reads)."""
    import yaml

    document, trials = {}, {}
    for agent in dict.fromkeys(r["config"][AGENT_PATH] for r in rows):
        best = (max if mode == "max" else min)((r for r in rows if r["config"][AGENT_PATH] == agent),
                                               key=lambda r: r[metric])
        document[agent] = {key.removeprefix("ppo."): value for key, value in best["config"].items()
                           if key.startswith("ppo.")}
        trials[agent] = best["trial"]
    atomic_write_text(path, f"# each agent's best trial by {metric} ({mode}): "
                      + ", ".join(f"{a} {t}" for a, t in trials.items()) + "\n"
                      + yaml.safe_dump(document, sort_keys=False))
    return document
