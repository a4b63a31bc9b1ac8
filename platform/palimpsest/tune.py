"""`palimpsest tune JOB.yaml`: a Ray Tune search over any job kind's own fields.

Each trial is the job with the sampled values put in (`spec/tuning.py`), validated like a
user's spec, and run by the same runner `palimpsest run` uses, in its own run folder under
the search folder (`trials/<trial id>/`); Ray Train starts inside the trial. A trial holds
no CPU of its own (a 1-byte memory bundle): its Ray Train workers hold the CPUs, so Tune
never reserves CPUs that the trials' workers then wait for. `rl` trials are the benchmark's
PPO trial itself (`rl/trial.py`), one agent × one environment setting × one seed.

While a trial runs, the loop's reports (task ends, periodic evaluations, served requests)
reach Tune through `TrialProgress`, a Ray Train callback, as the kind's progress objectives
(`spec.tuning.PROGRESS`); the finished run's summary.json gives the final ones. ASHA and
PBT act on the former; ASHA times each trial by the share of its own budget done
(`OwnBudgetASHA`), so a search over a trial's length compares trials at equal fractions.
A trial folder that exists when Tune (re)starts the trial — a resumed search — is resumed
like `run --resume` (from its last checkpoint), or, when it had finished, reports its
summary again without training.

What the user sees: a line per trial report and per trial end, `done (k/N trials)` against the
search's own total (num_samples per grid point: Tune makes its trials as it goes), and on a
terminal a trials row with an ETA (`palimpsest.progress`).

The search folder: spec.yaml, env.json, summary.json (`best_config`, `best_result`,
`trials`, the Pareto front of a multi-objective search), trials.csv, best.yaml (a complete
job that `palimpsest run` accepts), plots/, report.md, trials/, ray/ (Tune's own state).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from ray.train import UserCallback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from palimpsest import progress as ui
from palimpsest.private_search import PLANNED, best_yaml_header, planned_block, poisson_trial_count, search_privacy
from palimpsest.atomic import atomic_write_text
from palimpsest.run_folder import RunFolder
from palimpsest.storage import finish_upload, is_uri, join
from palimpsest.spec import dump_spec, parse_spec
from palimpsest.spec.tuning import FINISHED, units, units_done, with_values

TRIALS_DIR = "trials"
WALL = "trial_wall_s"  # the trial run's own wall time, in its summary and in its final report
STATUSES = ("finished", "stopped early", "error", "unfinished")


# ----------------------------------------------------------------------------- objectives


def lookup(summary: dict, dotted: str):
    """A dotted key of a summary (None when absent)."""
    node = summary
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def progress_metrics(kind: str, report: dict, last_unit: int) -> dict | None:
    """The progress objectives in one report of the training loop (rank 0's), or None: the kind's runner
    reads its loop's reports (`search_progress`). The last task / request is left out: the finished run's
    summary reports it."""
    from palimpsest.kinds import KINDS

    return KINDS[kind].runner.search_progress(report, last_unit)


class TrialProgress(UserCallback):
    """Passes the training loop's reports on to Ray Tune as the kind's progress objectives.

    A Ray Train callback (`RunConfig(callbacks=...)`, run where Ray Train's controller runs)
    that hands each report, cut down to the kind's progress objectives, to Ray's own
    `ray.tune.integration.ray_train.TuneReportCallback` through its public `after_report` —
    the path Ray's guide "Hyperparameter Tuning with Ray Tune" (Train V2) names for a Train run
    inside a Tune trial. That callback passes rank 0's report on unchanged, so it gets the
    objectives, not the loop's report: a report that lacks one of the search's objectives is
    not passed on at all (Tune checks every result for them), and none carries a checkpoint
    path (the trial's folder holds its checkpoints).
    """

    def __init__(self, kind: str, last_unit: int, metrics: list[str]):
        self.kind, self.last_unit, self.metrics = kind, last_unit, list(metrics)
        self.to_tune = TuneReportCallback()  # (made in the trial: it connects to the trial's Tune session)

    def after_report(self, run_context, metrics, checkpoint):
        found = progress_metrics(self.kind, metrics[0], self.last_unit)
        if found and all(found.get(m) is not None for m in self.metrics):
            self.to_tune.after_report(run_context, [{**found, FINISHED: False}], None)


# ----------------------------------------------------------------------------- trials' budgets


class TrialBudgets:
    """Each trial's own job (the base job with its values), parsed once: the units it has and has done."""

    def __init__(self, base: dict):
        self.base = base
        self.base_units = units(parse_spec(base, origin="search"))
        self._specs = {}

    def spec(self, config: dict):
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in self._specs:
            self._specs[key] = parse_spec(with_values(self.base, config), origin="trial")
        return self._specs[key]

    def done(self, config: dict, report: dict | None) -> int:
        """Units the trial had done at `report` (its tasks, requests, evaluations)."""
        return units_done(self.spec(config), report) if report else 0

    def time(self, config: dict, report: dict) -> float:
        """The share of its own units done at `report`, in units of the base job (its end: base_units)."""
        spec = self.spec(config)
        return units_done(spec, report) * self.base_units / units(spec)


BUDGET_TIME = "budget_time"  # OwnBudgetASHA's time attribute


class OwnBudgetASHA(ASHAScheduler):
    """ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020), each trial
    timed by the share of its own budget done.

    A search over training.steps, eval.eval_every or budget.env_steps gives trials different numbers
    of units. A trial that has done k of its own n units is at time k × N / n, N the base job's units:
    every trial reaches max_t = N at its own last unit (none is cut short at another's length), the
    rungs (grace_period × reduction_factor^i) compare trials at equal fractions of their budgets, and
    `tune.grace_period` keeps meaning units of the base job (a trial of the base's length is timed
    by its units, as plain ASHA on training_iteration would). The time is worked out here, from the
    trial's config and its report (an rl trial's reports are the benchmark's own), and is given to
    ASHA only: Tune's records of the trial's results are as the trial reported them.
    """

    def __init__(self, budgets: TrialBudgets, *, grace_period: int, **asha):
        super().__init__(time_attr=BUDGET_TIME, max_t=budgets.base_units,
                         grace_period=min(grace_period, budgets.base_units), **asha)
        self.budgets = budgets

    def _timed(self, trial, result):
        return {**result, BUDGET_TIME: self.budgets.time(trial.config, result)} if result else result

    def on_trial_result(self, tune_controller, trial, result):
        return super().on_trial_result(tune_controller, trial, self._timed(trial, result))

    def on_trial_complete(self, tune_controller, trial, result):
        super().on_trial_complete(tune_controller, trial, self._timed(trial, result))


# ----------------------------------------------------------------------------- one trial


def run_trial(config: dict, *, base: dict, search_dir: str, metrics: list[str]) -> None:
    """One trial: the job with `config`'s values, run like `palimpsest run` in trials/<trial id>/."""
    from ray import tune

    spec = parse_spec(with_values(base, config), origin="trial")
    folder_path = Path(search_dir) / TRIALS_DIR / tune.get_context().get_trial_id()
    if is_uri(spec.storage_path):  # a bucket: each trial's checkpoints beside its folder, STORAGE/<search>/trials/<id>
        spec = spec.model_copy(update={"storage_path": join(spec.storage_path, Path(search_dir).name, TRIALS_DIR)})
    from palimpsest.kinds import KINDS

    runner = KINDS[spec.kind].runner
    if hasattr(runner, "search_trial"):  # a kind whose trials are not Ray Train runs (rl: RLlib's PPO trial)
        runner.search_trial(spec, folder_path)
        return
    resumed = (folder_path / "summary.json").is_file()
    if resumed:
        folder = RunFolder(folder_path)
        if folder.finished:  # finished before the search stopped: report it again, as it was
            previous = folder.read_summary()
            tune.report({**objective_values(previous, spec.kind), FINISHED: True, "run_folder": str(folder.path),
                         WALL: previous.get(WALL)})
            return
        prepared = runner.prepare(spec, saved_tokenizer=folder.tokenizer)
    else:
        prepared = runner.prepare(spec)
        folder = RunFolder.create(spec.name, folder_path)
    plan = getattr(getattr(prepared, "worker_config", None), "privacy", None)
    # Before it reads a byte: what this trial spends if it finishes (the search counts a stopped one so).
    planned = {PLANNED: planned_block(plan)} if plan is not None else {}
    folder.start(kind=spec.kind, name=spec.name, seed=spec.seed, spec_yaml=None if resumed else dump_spec(spec),
                 resumed=resumed, trial_config=config, **planned)
    started = time.perf_counter()
    try:
        summary = runner.run(spec, prepared, folder, use_ray=True,
                             progress=TrialProgress(spec.kind, units(spec) - 1, metrics))
    except BaseException as error:
        folder.fail(f"{type(error).__name__}: {error}")
        _to_bucket(spec, folder, finished=False)
        raise
    summary.update({"resumed": resumed, "trial_config": config, WALL: round(time.perf_counter() - started, 3),
                    **planned})
    folder.finish(summary)
    _to_bucket(spec, folder, finished=True)
    tune.report({**objective_values(summary, spec.kind), FINISHED: True, "run_folder": str(folder.path),
                 WALL: summary[WALL]})


def _to_bucket(spec, folder: RunFolder, *, finished: bool) -> None:
    """A bucket storage_path: the trial's folder goes beside its checkpoints from the node it ran on, which
    need not be the search's (a trial ASHA stops is ended without warning: the search's upload covers
    the ones on its node)."""
    if not is_uri(spec.storage_path):
        return
    try:
        finish_upload(folder.path, spec.storage_path, finished=finished)
    except Exception as error:  # noqa: BLE001 - the trial's result stands; its folder is still on its node
        ui.warn(f"trial folder {folder.path} not uploaded to {spec.storage_path}: "
                f"{type(error).__name__}: {error}")


def objective_values(summary: dict, kind: str) -> dict:
    """Every objective of the kind that the summary holds, by its dotted name."""
    from palimpsest.spec.tuning import METRICS

    return {name: value for name in METRICS[kind] if (value := lookup(summary, name)) is not None}


# ----------------------------------------------------------------------------- the search


def search_base(spec) -> dict:
    """The resolved job every trial starts from (the job's own `search_document`)."""
    return spec.search_document()


def _domain(dimension: dict):
    from ray import tune

    (kind, values), = dimension.items()
    if kind == "uniform":
        return tune.uniform(*values)
    if kind == "loguniform":
        return tune.loguniform(*values)
    if kind == "randint":
        return tune.randint(values[0], values[1] + 1)  # both ends included (Tune's upper end is not)
    if kind == "choice":
        return tune.choice(values)
    return tune.grid_search(values)


def concurrency(spec, capacity: dict[str, float]) -> tuple[int, str | None]:
    """How many trials run at once on a cluster that can hold `capacity` (CPUs and GPUs alike), and a note
    when that is fewer than asked."""
    from palimpsest.scaling import job_need, show, trials_at_once

    need = job_need(spec, search=True)
    fits, limit = trials_at_once(need, capacity)
    asked = spec.tune.max_concurrent_trials
    if asked is None:
        return fits, None
    if asked > fits:
        return fits, (f"tune.max_concurrent_trials: {asked} asked, but the cluster's {show(capacity)} hold {fits} "
                      f"trial(s) of {show(need.total)} at once ({limit} bound); running {fits}")
    return asked, None


def run_search(spec, folder: RunFolder, *, resume: bool) -> dict:
    """Run (or continue) the search; write trials.csv, best.yaml and return the summary."""
    import os

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune

    from palimpsest.kinds import KINDS
    from palimpsest.scaling import capacity

    started = time.perf_counter()
    search = spec.tune
    metrics, modes = search.metrics, search.modes
    base = search_base(spec)
    storage = str(folder.path / "ray")
    name = "search"
    experiment = f"{storage}/{name}"
    budgets = TrialBudgets(base)
    trainable = tune.with_parameters(run_trial, base=base, search_dir=str(folder.path), metrics=metrics)
    runner = KINDS[spec.kind].runner
    if hasattr(runner, "search_resources"):  # rl: what RLlib asks for the trial's config
        trainable = tune.with_resources(trainable, runner.search_resources(spec))
    else:  # the trial's Ray Train workers hold the CPUs (a bundle must hold something: one byte)
        trainable = tune.with_resources(trainable, tune.PlacementGroupFactory([{"memory": 1}]))
    at_once, note = concurrency(spec, capacity())
    if note:
        ui.say(f"note: {note}")
    if resume and tune.Tuner.can_restore(experiment):
        ui.say(f"resuming the search in {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
    else:
        if resume:
            ui.say("the interrupted search had not started its trials; starting it")
        samples = search.num_samples
        if getattr(spec, "privacy", None) is not None and search.private_selection == "poisson":
            # Papernot & Steinke: a secret, Poisson-distributed number of trials (kept in Tune's state on resume)
            samples = poisson_trial_count(search.num_samples)
            if samples == 0:
                return _no_trial(spec, started)
        tuner = tune.Tuner(trainable, param_space={p: _domain(d) for p, d in search.space.items()},
                           tune_config=_tune_config(spec, at_once, samples, budgets),
                           run_config=tune.RunConfig(
                               name=name, storage_path=storage, verbose=0,
                               failure_config=tune.FailureConfig(max_failures=getattr(spec, "max_failures", 0)),
                               callbacks=[_progress_table(spec, metrics, budgets, folder.path.name),
                                          *_tracking(spec, folder)]))
    count = "a secret, Poisson-drawn number of" if search.private_selection == "poisson" else search.num_samples
    ui.say(f"search: {search.search}, scheduler {search.scheduler}, {count} sample(s), "
           f"{at_once} trial(s) at once; objective {', '.join(f'{m} ({d})' for m, d in zip(metrics, modes))}")
    grid = tuner.fit()
    elapsed = time.perf_counter() - started
    rows = [_row(result, search, metrics, search_dir=folder.path, budgets=budgets) for result in grid]
    rows.sort(key=lambda r: r["trial"])
    timed_out = search.time_budget_s is not None and elapsed >= search.time_budget_s
    for row in rows:
        if row["status"] == "unfinished" and timed_out:
            row["status"] = "stopped early"  # by the time budget
    if any(r["status"] == "unfinished" for r in rows) or not rows:
        raise KeyboardInterrupt(f"{sum(r['status'] == 'unfinished' for r in rows)} trials unfinished")
    _write_csv(folder.path / "trials.csv", rows, list(search.space), metrics)
    finished = [r for r in rows if r["status"] == FINISHED and all(r.get(m) is not None for m in metrics)]
    if not finished:
        errors = [r for r in rows if r["status"] == "error"]
        raise RuntimeError(f"no trial finished ({len(errors)} failed; first: {errors[0]['error']})" if errors
                           else "no trial finished")
    front = pareto_front(finished, metrics, modes) if len(metrics) > 1 else None
    best = _best(front or finished, metrics[0], modes[0])
    best_spec = parse_spec(with_values(base, best["config"]), origin="best")
    privacy = search_privacy(spec, rows)
    atomic_write_text(folder.path / "best.yaml",
                      f"# best trial {best['trial']} of the search in {folder.path}\n"
                      f"# {', '.join(f'{m} = {best[m]:.6g}' for m in metrics)}\n" + best_yaml_header(privacy)
                      + dump_spec(best_spec))
    summary = {
        "status": "ok", "kind": "tune", "job_kind": spec.kind, "name": spec.name, "seed": spec.seed,
        "metric": metrics if len(metrics) > 1 else metrics[0], "mode": modes if len(modes) > 1 else modes[0],
        "scheduler": search.scheduler, "search": search.search, "space": search.space,
        "best_trial": best["trial"], "best_config": best["config"],
        "best_result": {m: best[m] for m in metrics} | {"run_folder": best["run_folder"]},
        "trials": len(rows),
        "statuses": {status: sum(r["status"] == status for r in rows) for status in STATUSES},
        "rows": rows,
        "privacy": privacy,
        "cost": {"wall_s": round(elapsed, 3), "trial_wall_s": round(sum(r["wall_s"] or 0 for r in rows), 3)},
    }
    if front is not None:
        summary["pareto_front"] = [{"trial": r["trial"], "config": r["config"], **{m: r[m] for m in metrics}}
                                   for r in front]
    if hasattr(runner, "search_results"):  # rl: a search over agents writes each agent's best PPO settings
        summary.update(runner.search_results(spec, folder, finished, metrics, modes))
    return summary


def _no_trial(spec, started: float) -> dict:
    """A Poisson selection that drew no trial (probability e^-μ): nothing read the data, nothing to release."""
    search = spec.tune
    return {"status": "ok", "kind": "tune", "job_kind": spec.kind, "name": spec.name, "seed": spec.seed,
            "metric": search.metric, "mode": search.mode, "scheduler": search.scheduler, "search": search.search,
            "space": search.space, "best_trial": None, "best_config": None, "best_result": None, "trials": 0,
            "rows": [], "privacy": {"selection": "poisson", "selected_epsilon": 0.0,
                                    "note": "the Poisson draw gave no trial: nothing was trained or released"},
            "cost": {"wall_s": round(time.perf_counter() - started, 3), "trial_wall_s": 0.0}}


def _tune_config(spec, at_once: int, samples: int, budgets: TrialBudgets):
    from ray import tune

    search = spec.tune
    metrics, modes = search.metrics, search.modes
    seed = search.seed if search.seed is not None else spec.seed
    if search.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"
        searcher = OptunaSearch(metric=metrics if len(metrics) > 1 else metrics[0],
                                mode=modes if len(modes) > 1 else modes[0], seed=seed)
    else:
        from ray.tune.search import BasicVariantGenerator

        # (a SearchGenerator limits its own concurrency: Tune ignores max_concurrent_trials for it)
        searcher = BasicVariantGenerator(random_state=seed, max_concurrent=at_once)
    scheduler = None
    if search.scheduler == "asha":
        scheduler = OwnBudgetASHA(budgets, metric=metrics[0], mode=modes[0], grace_period=search.grace_period,
                                  reduction_factor=search.reduction_factor)
    elif search.scheduler == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        scheduler = PopulationBasedTraining(
            time_attr="training_iteration", metric=metrics[0], mode=modes[0],
            perturbation_interval=search.perturbation_interval,
            hyperparam_mutations={p: _domain(d) for p, d in search.space.items()})  # (its draws: Python's random)
    return tune.TuneConfig(num_samples=samples,
                           max_concurrent_trials=at_once if search.search == "optuna" else None,
                           time_budget_s=search.time_budget_s, search_alg=searcher, scheduler=scheduler,
                           trial_name_creator=lambda t: t.trial_id, trial_dirname_creator=lambda t: t.trial_id)


def _row(result, search, metrics: list[str], *, search_dir: Path, budgets: TrialBudgets) -> dict:
    """One trial's line of trials.csv, from Tune's record of its last result."""
    last = result.metrics or {}
    config = {p: result.config.get(p) for p in search.space}
    if result.error is not None:
        status = "error"
    elif last.get(FINISHED):
        status = FINISHED
    elif last.get("done"):
        status = "stopped early"  # by the scheduler
    else:
        status = "unfinished"
    trial = last.get("trial_id") or Path(result.path).name  # (Tune's folder for it is named by its id)
    # units its run did, not Tune's training_iteration (1 for a finished trial reported again on a resume)
    return {"trial": trial, "status": status, "iterations": budgets.done(result.config, last), "config": config,
            # the trial's own run (a finished trial reported again on a resume keeps its first wall time)
            **{m: last.get(m) for m in metrics}, "wall_s": last.get(WALL) or round(last.get("time_total_s") or 0, 3)
            or None,
            # its own run folder, whether or not its last report named it (not Tune's ray/search/<id>)
            "run_folder": str(Path(search_dir) / TRIALS_DIR / trial),
            "error": (str(result.error).strip().splitlines() or [""])[-1] if result.error is not None else None}


def _best(rows: list[dict], metric: str, mode: str) -> dict:
    return (max if mode == "max" else min)(rows, key=lambda r: r[metric])


def pareto_front(rows: list[dict], metrics: list[str], modes: list[str]) -> list[dict]:
    """The non-dominated rows (Optuna's `Study.best_trials` over the finished trials' objectives)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize" if m == "max" else "minimize" for m in modes])
    study.add_trials([optuna.trial.create_trial(values=[float(r[m]) for m in metrics], user_attrs={"row": i})
                      for i, r in enumerate(rows)])
    return [rows[t.user_attrs["row"]] for t in sorted(study.best_trials, key=lambda t: t.number)]


def _write_csv(path: Path, rows: list[dict], space: list[str], metrics: list[str]) -> None:
    buffer = io.StringIO()
    columns = ["trial", "status", "iterations", *space, *metrics, "wall_s", "run_folder", "error"]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, **{p: json.dumps(v) if isinstance(v, (list, dict)) else v
                                   for p, v in row["config"].items()}})
    atomic_write_text(path, buffer.getvalue())


def search_total(spec) -> int | None:
    """The trials the search runs: num_samples per grid point (what Tune's BasicVariantGenerator makes; optuna
    takes no grid); None for a Poisson selection, whose number of trials is secret."""
    search = spec.tune
    if search.private_selection == "poisson":
        return None
    total = search.num_samples
    for dimension in search.space.values():
        if "grid" in dimension:
            total *= len(dimension["grid"])
    return total


def _tracking(spec, folder: RunFolder) -> list:
    """The job's `tracking:` as Ray Tune's logger callbacks: one tracked run per trial (palimpsest.tracking)."""
    if getattr(spec, "tracking", None) is None:
        return []
    from palimpsest.tracking import tune_callbacks

    return tune_callbacks(spec.tracking, name=spec.name, folder=folder.path)


def _progress_table(spec, metrics: list[str], budgets: TrialBudgets, name: str = "search"):
    """One line per report and per trial end, in place of Tune's status tables; a display's trials row."""
    from ray import tune

    from palimpsest.spec.tuning import PROGRESS, UNIT

    unit = UNIT[spec.kind]
    total = search_total(spec)

    def values(result) -> str:
        shown = [m for m in metrics if isinstance(result.get(m), (int, float))]
        if not shown:  # an objective known only at the end (rl: test_success_rate): what progress there is
            shown = [m for m in PROGRESS.get(spec.kind, ()) if isinstance(result.get(m), (int, float))]
        return ", ".join(f"{m} {result[m]:.4g}" for m in shown)

    def short(config) -> str:
        return ", ".join(f"{p}={v:.4g}" if isinstance(v, float) else f"{p}={v}" for p, v in config.items())

    class Progress(tune.Callback):
        key = f"{name} trials"

        def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
            ui.begin(self.key, "trials", total)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            what = "finished" if result.get(FINISHED) else f"{unit} {budgets.done(trial.config, result)}"
            ui.say(f"{trial.trial_id} ({short(trial.config)}): {what}: {values(result)}")
            ui.update(self.key, note=f"{trial.trial_id}: {values(result)}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            done = sum(t.status in ("TERMINATED", "ERROR") or t is trial for t in trials)
            early = "" if (trial.last_result or {}).get(FINISHED) else " (stopped early)"
            # Tune creates trials as the search goes: len(trials) grows; the search's own total does not.
            of = f"{done}/{total} trials" if total is not None else ui.counted(done, "trial") + " done"
            ui.say(f"trial {trial.trial_id} done{early} ({of})")
            ui.update(self.key, done=done)

        def on_trial_error(self, iteration, trials, trial, **info):
            ui.say(f"trial {trial.trial_id} failed: see {trial.local_path}")
            ui.update(self.key, done=sum(t.status in ("TERMINATED", "ERROR") or t is trial for t in trials))

        def on_experiment_end(self, trials, **info):
            ui.end(self.key)

    return Progress()
