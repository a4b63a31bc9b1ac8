"""`palimpsest tune`: the tune: section, ASHA on per-task reports, resume after Ctrl-C, best.yaml, Pareto fronts."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from interrupting import interrupt_at
from palimpsest.cli import app
from palimpsest.spec import SpecError, parse_spec
from palimpsest.spec.tuning import units, units_done, with_values
from palimpsest.tune import (TrialBudgets, _row, _tune_config, concurrency, pareto_front, progress_metrics,
                             search_base)

REPO = Path(__file__).resolve().parent.parent
GOOD_LR, BAD_LR = 3e-3, 3.0


def continual_search(**tune) -> dict:
    """Two fact-world tasks, naive fine-tuning, one worker: ~30 s a trial (most of it Ray Train's start)."""
    return {"kind": "continual", "name": "cs", "seed": 0,
            "stream": {"source": "factworld", "num_entities": 12, "attributes_per_entity": 3, "num_tasks": 2,
                       "general_samples": 16, "general_replay_samples": 0},
            "methods": ["naive"],
            "training": {"steps": 30, "batch_size": 16, "lr": GOOD_LR, "log_every": 30},
            "eval": {"eval_every": None},
            "tune": {"space": {"training.lr": {"grid": [GOOD_LR, BAD_LR]}}, "metric": "acc", "mode": "max",
                     "num_samples": 1, **tune}}


def train_search(**tune) -> dict:
    """A fact-world train job of 10 steps, evaluated every 5 (2 evaluations, the last its final result)."""
    return {"kind": "train", "name": "ts", "seed": 0,
            "data": {"source": "factworld", "num_entities": 8, "attributes_per_entity": 3, "split": "retain90"},
            "training": {"steps": 10, "batch_size": 8, "lr": 3e-3, "log_every": 10},
            "eval": {"eval_every": 5},
            "tune": {"space": {"training.steps": {"grid": [10, 20]}}, "metric": "final.holdout.loss",
                     "mode": "min", "num_samples": 1, "scheduler": "asha", **tune}}


PRETRAINING = {"steps": 20, "batch_size": 8, "lr": 3e-3, "log_every": 20}


def unlearn_search(cache: Path, **tune) -> dict:
    return {"kind": "unlearn", "name": "us", "seed": 2,
            "model": {"preset": "tiny-llama", "vocab_size": 400},
            "data": {"source": "factworld", "num_entities": 30, "attributes_per_entity": 2, "real_authors": 8,
                     "world_facts": 8},
            "target": {"training": {"steps": 40, "batch_size": 16, "lr": 3e-3, "log_every": 20},
                       "pretraining": PRETRAINING},
            "requests": [{"id": "r1", "percent": 5}],
            "training": {"steps": 4, "batch_size": 4, "lr": 1e-3, "lr_schedule": "constant", "log_every": 4},
            "eval": {"max_examples": 16, "batch_size": 32, "max_new_tokens": 32},  # as tests/test_unlearn_job.py
            "methods": ["npo"], "cache": str(cache),
            "tune": {"space": {"training.lr": {"loguniform": [1e-4, 1e-2]},
                               "methods.0.params.beta": {"uniform": [0.05, 0.5]}},
                     "metric": ["forget_quality", "model_utility"], "mode": ["max", "max"], "num_samples": 3,
                     "search": "optuna", "max_concurrent_trials": 2, **tune}}


def problems(document: dict) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(document)
    return "\n".join(caught.value.problems)


def rows(folder: Path) -> list[dict]:
    with open(folder / "trials.csv") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- the tune: section


def test_a_space_that_can_reach_an_invalid_job_is_refused_up_front():
    document = continual_search(space={"training.lr": {"uniform": [-1e-3, 1e-2]}})
    assert "tune.space.training.lr: uniform reaches -0.001, which gives an invalid job: training.lr" in \
        problems(document)
    document = continual_search(space={"methods.0.params.lam": {"choice": [1.0, 10.0]}})
    assert "tune.space.methods.0.params.lam: choice reaches 1.0" in problems(document)  # naive takes no lam
    assert "training.lrr: unknown key; did you mean 'lr'?" in problems(
        continual_search(space={"training.lrr": {"loguniform": [1e-4, 1e-2]}}))
    assert "methods is a list of 1: give an index below 1" in problems(
        continual_search(space={"methods.3.params.lam": {"choice": [1.0]}}))
    assert "loguniform: low 0 must be above 0" in problems(
        continual_search(space={"training.lr": {"loguniform": [0, 1e-2]}}))
    assert "randint: [low, high], two integers" in problems(
        continual_search(space={"training.steps": {"randint": [1.5, 9]}}))
    assert "give exactly one distribution" in problems(
        continual_search(space={"training.lr": {"uniform": [1e-4, 1e-2], "choice": [1e-3]}}))
    # randint includes both ends: its upper end is checked as well
    assert "randint reaches 0" in problems(continual_search(space={"training.steps": {"randint": [0, 9]}}))


def test_objectives_and_schedulers_are_checked_against_the_kind():
    assert "tune.metric: unknown objective 'accc' for kind continual; did you mean 'acc'?" in problems(
        continual_search(metric="accc"))
    assert "asha acts on results reported per task, and bwt is known only at the end" in problems(
        continual_search(metric="bwt", scheduler="asha"))
    assert "scheduler: asha acts on one metric" in problems(
        continual_search(metric=["acc", "general_loss"], mode=["max", "min"], scheduler="asha"))
    assert "mode: one per metric" in problems(continual_search(metric=["acc", "bwt"], mode="max"))
    assert "search: optuna samples its own points and takes no grid" in problems(continual_search(search="optuna"))
    assert "pbt restores trials from checkpoints at every report" in problems(
        continual_search(scheduler="pbt", space={"training.lr": {"loguniform": [1e-4, 1e-2]}}))
    two = continual_search()
    two["methods"] = ["naive", "ewc"]
    assert "methods: a search tunes one method (2 given)" in problems(two)
    sweep = {"kind": "privacy_sweep", "job": {"kind": "train", "data": {"source": "factworld"}}, "epsilons": [8.0],
             "tune": {"space": {"epsilons": {"choice": [[1.0]]}}, "metric": "acc", "mode": "max"}}
    assert "a privacy_sweep is a sweep already" in problems(sweep)
    train = {"kind": "train", "data": {"source": "factworld", "num_entities": 10},
             "tune": {"space": {"training.lr": {"loguniform": [1e-4, 1e-2]}}, "metric": "final.eval.loss",
                      "mode": "min", "scheduler": "asha"}}
    found = problems(train)
    assert "final.eval.loss: this job evaluates train, holdout only" in found
    train["tune"]["metric"] = "final.holdout.loss"
    assert "eval.eval_every: asha needs results while a trial trains" in problems(train)
    train["eval"] = {"eval_every": 10}
    spec = parse_spec(train)
    assert units(spec) == 30  # steps 300, an evaluation every 10 (the last is the final result)


def test_shipped_searches_validate_and_rl_searches_take_one_trial_setting():
    for job in sorted((REPO / "jobs" / "tune").glob("*.yaml")):
        result = CliRunner().invoke(app, ["validate", str(job)])
        assert result.exit_code == 0, (job, result.output)
    document = yaml.safe_load((REPO / "jobs" / "tune" / "rl_ppo_lstm.yaml").read_text())
    document["agents"] = ["lstm", "gru"]
    assert "agents: a search trains one agent on one environment setting with one seed" in problems(document)


def test_sampled_values_go_into_a_copy_of_the_job():
    base = {"training": {"lr": 1.0}, "methods": [{"name": "ewc", "params": {}}]}
    found = with_values(base, {"training.lr": 2.0, "methods.0.params.lam": 5.0})
    assert found == {"training": {"lr": 2.0}, "methods": [{"name": "ewc", "params": {"lam": 5.0}}]}
    assert base == {"training": {"lr": 1.0}, "methods": [{"name": "ewc", "params": {}}]}


def test_progress_reports_become_the_kinds_objectives():
    scores = {"task0": {"answer_accuracy": 0.5}, "task1": {"answer_accuracy": 0.25}, "general": {"loss": 3.0}}
    # ACC over the tasks seen so far, at task ends before the last (the summary reports the last)
    assert progress_metrics("continual", {"task_end": 1, "scores": scores}, 2) == {
        "acc": 0.375, "general_loss": 3.0, "task": 1}
    assert progress_metrics("continual", {"task_end": 2, "scores": scores}, 2) is None
    assert progress_metrics("continual", {"task": 0, "step": 5, "scores": scores}, 2) is None  # mid-task
    hook = {"forget_quality": 0.1, "model_utility": 0.4, "mia_min_k": 0.6, "cost_ratio": 0.2}
    assert progress_metrics("unlearn", {"task_end": 0, "hook": hook}, 1) == {
        "forget_quality": 0.1, "model_utility": 0.4, "mia.min_k": 0.6, "request": 0}
    train = progress_metrics("train", {"task": 0, "step": 10, "scores": {"holdout": {"loss": 2.0, "count": 4}}}, 0)
    assert train == {"final.holdout.loss": 2.0, "step": 10}


def test_a_trials_units_done_are_read_from_its_report_not_from_tunes_iteration_count():
    continual = parse_spec(continual_search())
    assert units_done(continual, {"acc": 0.5, "task": 0, "finished": False, "training_iteration": 1}) == 1
    # a finished trial reported again on a resume: Tune counts 1 iteration, its run did every task
    assert units_done(continual, {"acc": 0.5, "finished": True, "training_iteration": 1}) == units(continual) == 2
    assert units_done(continual, {}) == 0
    train = parse_spec(with_values(train_search(), {"training.steps": 20}))
    assert [units_done(train, {"step": s}) for s in (5, 10, 15)] == [1, 2, 3] and units(train) == 4
    assert units_done(train, {"finished": True}) == 4
    assert units_done(parse_spec(unlearn_search(Path("cache"))), {"request": 0, "forget_quality": 0.1}) == 1
    rl = yaml.safe_load((REPO / "jobs" / "tune" / "rl_ppo_lstm.yaml").read_text())
    rl.update({"budget": {"env_steps": 1000},
               "ppo": {**rl.get("ppo", {}), "train_batch_size": 100, "minibatch_size": 50},
               "evaluation": {**rl.get("evaluation", {}), "every": 3}})
    rl = parse_spec(rl)
    assert units(rl) == 4  # 10 iterations: evaluations at 3, 6, 9 and the last
    assert [units_done(rl, {"iteration": i}) for i in (3, 6, 9, 10)] == [1, 2, 3, 4]


def test_asha_times_each_trial_by_the_share_of_its_own_budget_done():
    """A search over training.steps: base 10 steps (2 evaluations), trials of 10 and 20 (4 evaluations). ASHA's
    max_t is the base's 2 units and each trial reaches it at its own end; a rung compares trials at equal
    fractions of their budgets (the 20-step trial at its 2nd evaluation, not its 1st)."""
    from ray.tune.schedulers import TrialScheduler

    spec = parse_spec(train_search(grace_period=1, reduction_factor=2))
    scheduler = _tune_config(spec, 2, 1, TrialBudgets(search_base(spec))).scheduler
    milestones = [float(part.split(":")[0]) for part in scheduler.debug_string().split("Iter ")[1:]]
    assert milestones == [2.0, 1.0]  # grace_period 1 × 2^i, in units of the base job, up to max_t = 2
    trials = {name: SimpleNamespace(trial_id=name, config={"training.steps": steps})
              for name, steps in (("short", 10), ("long", 20), ("long_bad", 20))}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    iterations = dict.fromkeys(trials, 0)

    def report(name, loss, **fields):  # as Tune passes it: its own iteration count added
        iterations[name] += 1
        result = {"final.holdout.loss": loss, "finished": False, "training_iteration": iterations[name], **fields}
        return scheduler.on_trial_result(None, trials[name], result)

    assert report("short", 1.0, step=5) == TrialScheduler.CONTINUE  # 1 of 2: the first at rung 1
    assert report("long", 5.0, step=5) == TrialScheduler.CONTINUE  # 1 of 4: not yet at rung 1, worse or not
    assert report("long", 0.5, step=10) == TrialScheduler.CONTINUE  # 2 of 4: rung 1, better (not max_t: 2 ≠ 4)
    assert report("long", 0.4, step=15) == TrialScheduler.CONTINUE
    assert report("long", 0.3, finished=True) == TrialScheduler.STOP  # its own end: max_t
    assert report("long_bad", 9.0, step=5) == TrialScheduler.CONTINUE
    assert report("long_bad", 9.0, step=10) == TrialScheduler.STOP  # rung 1: worse than both at half their budgets


def test_a_trials_row_names_its_own_folder_and_the_units_its_run_did(tmp_path):
    """trials.csv: a trial ASHA stopped (its last report names no folder) points at trials/<id>, not at Tune's
    ray/search/<id>; a finished trial reported again on a resume counts its 3 tasks, not Tune's 1 iteration."""
    document = continual_search()
    document["stream"]["num_tasks"] = 3
    spec = parse_spec(document)
    budgets = TrialBudgets(search_base(spec))
    search_dir = tmp_path / "search"

    def row(trial_id, metrics, error=None):
        result = SimpleNamespace(metrics=metrics, config={"training.lr": GOOD_LR}, error=error,
                                 path=str(search_dir / "ray" / "search" / trial_id))
        return _row(result, spec.tune, ["acc"], search_dir=search_dir, budgets=budgets)

    stopped = row("a1", {"acc": 0.1, "task": 0, "finished": False, "done": True, "trial_id": "a1",
                         "training_iteration": 1, "time_total_s": 4.0})
    assert stopped["status"] == "stopped early" and stopped["iterations"] == 1
    assert stopped["run_folder"] == str(search_dir / "trials" / "a1")
    resumed = row("b2", {"acc": 0.7, "finished": True, "run_folder": "elsewhere", "trial_wall_s": 9.0,
                         "trial_id": "b2", "training_iteration": 1, "done": True})
    assert resumed["status"] == "finished" and resumed["iterations"] == 3 and resumed["wall_s"] == 9.0
    assert resumed["run_folder"] == str(search_dir / "trials" / "b2")
    failed = row("c3", {}, error=RuntimeError("boom"))
    assert (failed["status"], failed["iterations"], failed["run_folder"]) == (
        "error", 0, str(search_dir / "trials" / "c3"))


def test_the_pareto_front_holds_exactly_the_non_dominated_trials():
    import random

    generator = random.Random(0)
    for modes in (["max", "max"], ["max", "min"], ["min", "max", "min"]):
        metrics = [f"m{i}" for i in range(len(modes))]
        # values on a coarse grid: ties and duplicates included
        trials = [{"trial": str(i), **{m: generator.randint(0, 4) / 4 for m in metrics}} for i in range(40)]
        sign = [1 if mode == "max" else -1 for mode in modes]

        def dominates(a, b):
            pairs = [(s * a[m], s * b[m]) for s, m in zip(sign, metrics)]
            return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

        expected = [t["trial"] for t in trials if not any(dominates(o, t) for o in trials)]
        assert [t["trial"] for t in pareto_front(trials, metrics, modes)] == expected, modes


def test_concurrency_is_what_the_cluster_holds_in_cpus_and_gpus():
    spec = parse_spec(continual_search(max_concurrent_trials=4))
    assert concurrency(spec, {"CPU": 2.0}) == (2, "tune.max_concurrent_trials: 4 asked, but the cluster's 2 CPU "
                                                  "hold 2 trial(s) of 1 CPU at once (CPU bound); running 2")
    assert concurrency(parse_spec(continual_search()), {"CPU": 3.0}) == (3, None)
    assert concurrency(parse_spec(continual_search()), {"CPU": 3.0, "GPU": 8.0}) == (3, None)  # CPU trials: GPUs idle
    gpu = parse_spec({**continual_search(max_concurrent_trials=4), "scaling": {"use_gpu": True}})
    assert concurrency(gpu, {"CPU": 16.0, "GPU": 2.0}) == (2, "tune.max_concurrent_trials: 4 asked, but the cluster's "
                                                             "16 CPU, 2 GPU hold 2 trial(s) of 1 CPU, 1 GPU at once "
                                                             "(GPU bound); running 2")
    one_gpu = parse_spec({**continual_search(), "scaling": {"use_gpu": True, "gpus_per_worker": 0.4}})
    assert concurrency(one_gpu, {"CPU": 16.0, "GPU": 2.0}) == (5, None)  # 2 / 0.4: a fraction shares a GPU


# ----------------------------------------------------------------------------- searches on a real Ray


@pytest.mark.integration
def test_asha_stops_a_bad_learning_rate_and_best_yaml_reproduces_the_best_trial(tmp_path, ray_session,
                                                                                object_store, monkeypatch):
    """Done-means 2, 3 and 5: two trials at once, each a Ray Train run, never deadlock; ASHA stops a bad
    learning rate after its first task; the best trial's job reruns to the same ACC. Storage is a
    bucket: each trial's checkpoints and folder land under STORAGE/<search>/trials/<id>/."""
    # Trials 0 (good) and 1 (bad) start together; trial 2 (bad) starts when one of them ends, so it
    # always meets both at the first rung: ACC 0 under the rung's median stops it there.
    job = tmp_path / "search.yaml"
    storage = object_store.uri("searches")
    document = continual_search(space={"training.lr": {"grid": [GOOD_LR, BAD_LR, BAD_LR]}}, scheduler="asha",
                                max_concurrent_trials=2)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracking = {"mlflow": {"tracking_uri": str(tmp_path / "mlruns"), "experiment": "search"}}  # a run per trial
    job.write_text(yaml.safe_dump({**document, "storage_path": storage, "tracking": tracking}))
    folder = tmp_path / "search"
    result = CliRunner().invoke(app, ["tune", str(job), "--out", str(folder)])
    assert result.exit_code == 0, result.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    tracked = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    assert sorted(float(r.data.params["training.lr"]) for r in tracked) == sorted([GOOD_LR, BAD_LR, BAD_LR])
    found = rows(folder)
    assert len(found) == 3 and list(found[0])[:4] == ["trial", "status", "iterations", "training.lr"]
    stopped = [r for r in found if r["status"] == "stopped early"]
    assert stopped and all(int(r["iterations"]) < 2 and float(r["training.lr"]) == BAD_LR for r in stopped), found
    good = [r for r in found if float(r["training.lr"]) == GOOD_LR]
    bad = [float(r["acc"]) for r in found if r["status"] == "finished" and float(r["training.lr"]) == BAD_LR]
    assert good[0]["status"] == "finished" and float(good[0]["acc"]) > max(bad + [0.0]), found
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["trials"] == 3 and summary["kind"] == "tune"
    assert summary["best_config"] == {"training.lr": GOOD_LR}
    assert summary["best_result"]["acc"] == pytest.approx(float(good[0]["acc"]))
    trial = Path(summary["best_result"]["run_folder"])
    assert trial.parent == folder / "trials" and json.loads((trial / "summary.json").read_text())["status"] == "ok"
    for plot in ("objective_per_trial.png", "objective_by_field.png"):
        assert (folder / "plots" / plot).stat().st_size > 0
    assert "(best)" in (folder / "report.md").read_text()
    in_bucket = object_store.files("searches/search")
    for row in found:  # every trial, stopped early or not: its checkpoints and its folder
        mine = {key.split("/", 2)[2] for key in in_bucket if key.startswith(f"trials/{row['trial']}/")}
        assert "summary.json" in mine and any(key.endswith("checkpoint_manifest.json") for key in mine), mine
    assert "trials.csv" in in_bucket and not any(".storage-mirror" in key for key in in_bucket)
    assert yaml.safe_load((folder / "best.yaml").read_text())["storage_path"] == storage  # as the user wrote it

    rerun = tmp_path / "rerun"  # (the same loop in this process: one worker computes what one Ray worker did)
    result = CliRunner().invoke(app, ["run", str(folder / "best.yaml"), "--no-ray", "--out", str(rerun)])
    assert result.exit_code == 0, result.output
    again = json.loads((rerun / "summary.json").read_text())
    assert again["acc"] == pytest.approx(summary["best_result"]["acc"], abs=1e-6)
    assert again["accuracy_matrix"] == json.loads((trial / "summary.json").read_text())["accuracy_matrix"]


@pytest.mark.integration
@pytest.mark.slow  # ~70 s here: two trials of ~50 s at once on 2 CPUs
def test_asha_runs_each_trial_of_a_search_over_training_steps_to_its_own_length(tmp_path, ray_session):
    """Trials of 10 and 20 steps (2 and 4 evaluations; the base job's 10): every evaluation but the last
    reaches Tune as it happens, and ASHA's max_t does not stop the 20-step trial at the 10-step one's length.
    (grace_period 2: ASHA's only rung is max_t, so nothing else may stop a trial.)"""
    job = tmp_path / "search.yaml"
    job.write_text(yaml.safe_dump(train_search(grace_period=2, max_concurrent_trials=2)))
    folder = tmp_path / "search"
    result = CliRunner().invoke(app, ["tune", str(job), "--out", str(folder)])
    assert result.exit_code == 0, result.output
    found = {int(r["training.steps"]): r for r in rows(folder)}
    assert {steps: (r["status"], r["iterations"]) for steps, r in found.items()} == {
        10: ("finished", "2"), 20: ("finished", "4")}, found
    for steps, row in found.items():
        assert row["run_folder"] == str(folder / "trials" / row["trial"])
        reported = [json.loads(line) for line in (folder / "ray" / "search" / row["trial"] / "result.json")
                    .read_text().splitlines()]
        assert [r["step"] for r in reported if not r["finished"]] == list(range(5, steps, 5)), reported
        assert all(r["final.holdout.loss"] > 0 for r in reported) and reported[-1]["finished"]


@pytest.mark.integration
def test_a_search_bigger_than_the_cluster_is_refused_before_it_starts(tmp_path, ray_session):
    document = continual_search()
    document["scaling"] = {"num_workers": 3}
    document["training"]["batch_size"] = 15
    job = tmp_path / "search.yaml"
    job.write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(app, ["tune", str(job), "--out", str(tmp_path / "search")])
    assert result.exit_code == 2, result.output
    assert "scaling.num_workers × scaling.cpus_per_worker: each trial needs 3 × (1 CPU), but the Ray cluster's " \
           "nodes hold (2 CPU) and it has no autoscaler to add more" in " ".join(result.output.split())
    assert "Traceback" not in result.output and not (tmp_path / "search").exists()
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({k: v for k, v in continual_search().items() if k != "tune"}))
    result = CliRunner().invoke(app, ["tune", str(plain)])
    assert result.exit_code == 2 and "no search space in this job" in result.output


@pytest.mark.integration
@pytest.mark.cluster  # the interrupted search runs in a CLI subprocess with its own Ray
def test_a_multi_objective_unlearning_search_survives_ctrl_c_and_writes_a_pareto_front(tmp_path, ray_session,
                                                                                      unlearn_cache):
    """Done-means 1 and 4: SIGINT after a trial finished, --resume finishes the search without rerunning it;
    the Pareto front holds the non-dominated trials."""
    document = unlearn_search(unlearn_cache)  # (the session's: the same recipe as tests/test_unlearn_job.py's)
    # The target and retain models into the cache first, as a plain run of the job (what the trials
    # then share): each trial trains only its unlearning.
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({k: v for k, v in document.items() if k != "tune"}))
    warm = CliRunner().invoke(app, ["run", str(plain), "--no-ray", "--out", str(tmp_path / "warm")])
    assert warm.exit_code == 0, warm.output
    job = tmp_path / "search.yaml"
    job.write_text(yaml.safe_dump(document))
    folder = tmp_path / "search"
    code, output, hit = interrupt_at(["tune", str(job), "--out", str(folder)], tmp_path,
                                     lambda line: "[palimpsest] trial " in line and " done (" in line)
    assert code == 130 and hit is not None, output
    first = hit.split("[palimpsest] trial ", 1)[1].split(" done", 1)[0]
    # only our resume line; none of Tune's reporter box, Tune's Tuner.restore hint, Optuna's study line
    assert not any(noise in output for noise in ("Tuner.restore", "Configuration for experiment",
                                                   "A new study created")), output
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "palimpsest tune --resume" in summary["error"]
    finished = (folder / "trials" / first / "summary.json").read_bytes()
    assert json.loads(finished)["status"] == "ok"

    result = CliRunner().invoke(app, ["tune", "--resume", str(folder)])
    assert result.exit_code == 0, result.output
    assert "resuming the search" in result.output
    assert (folder / "trials" / first / "summary.json").read_bytes() == finished  # not rerun
    found = rows(folder)
    assert len(found) == 3 and all(r["status"] == "finished" for r in found), found
    mine = next(r for r in found if r["trial"] == first)
    assert float(mine["forget_quality"]) == json.loads(finished)["forget_quality"]
    assert float(mine["wall_s"]) == json.loads(finished)["trial_wall_s"]  # its own run's, not the re-report's
    assert mine["iterations"] == "1" and mine["run_folder"] == str(folder / "trials" / first)  # its 1 request

    summary = json.loads((folder / "summary.json").read_text())
    metrics = ["forget_quality", "model_utility"]
    points = {r["trial"]: tuple(float(r[m]) for m in metrics) for r in found}
    front = {t["trial"] for t in summary["pareto_front"]}

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and a != b

    assert front and all(not dominates(points[a], points[b]) for a, b in itertools.permutations(front, 2))
    assert all(any(dominates(points[f], points[t]) for f in front) for t in set(points) - front)
    assert summary["best_trial"] in front and (folder / "plots" / "pareto_front.png").stat().st_size > 0
    assert json.loads((folder / "trials" / summary["best_trial"] / "summary.json").read_text())["status"] == "ok"



@pytest.mark.integration
def test_a_search_over_agents_writes_each_agents_best_ppo_settings_that_a_matrix_job_reads(tmp_path, ray_session):
    """An rl search with agents.0.name on a grid tunes each agent apart: agent_ppo.yaml holds, per agent, the ppo
    values of that agent's best trial (not the overall best's), and `agent_ppo:` gives them to a matrix job."""
    document = yaml.safe_load((REPO / "jobs" / "tune" / "rl_agents.yaml").read_text())
    document.update({"parameters": 3000, "budget": {"env_steps": 256},
                     "envs": [{"id": "palimpsest/CueRewrite-v0", "params": {"num_cues": 2, "delay": 3}}],
                     "ppo": {"train_batch_size": 256, "minibatch_size": 128, "num_epochs": 1, "max_seq_len": 4,
                             "num_envs_per_env_runner": 8},
                     "evaluation": {"every": 1, "episodes": 8, "test_episodes": 8}})
    # lr 3.0 wrecks a trial: each agent's best is its small lr, whatever the other agent scores.
    document["tune"] = {"space": {"agents.0.name": {"grid": ["mlp", "gru"]}, "ppo.lr": {"grid": [1e-3, 3.0]},
                                  "ppo.entropy_coeff": {"choice": [0.0]}},
                        "metric": "test_success_rate", "mode": "max", "num_samples": 1}
    job = tmp_path / "search.yaml"
    job.write_text(yaml.safe_dump(document))
    folder = tmp_path / "search"
    result = CliRunner().invoke(app, ["tune", str(job), "--out", str(folder)])
    assert result.exit_code == 0, result.output
    found = rows(folder)
    assert {(r["agents.0.name"], float(r["ppo.lr"])) for r in found} == {
        (a, lr) for a in ("mlp", "gru") for lr in (1e-3, 3.0)}
    chosen = yaml.safe_load((folder / "agent_ppo.yaml").read_text())
    assert set(chosen) == {"mlp", "gru"}
    for agent, values in chosen.items():
        mine = [r for r in found if r["agents.0.name"] == agent]
        best = max(mine, key=lambda r: float(r["test_success_rate"]))
        assert values == {"lr": float(best["ppo.lr"]), "entropy_coeff": 0.0}, (agent, mine)
    matrix = {"kind": "rl", "agents": ["mlp", "gru", "lstm"], "envs": ["palimpsest/CueRewrite-v0"],
              "ppo": {"lr": 5e-4}, "agent_ppo": str(folder / "agent_ppo.yaml")}
    from palimpsest.runners.rl import prepare

    lrs = {t["agent"]: t["ppo"]["lr"] for t in prepare(parse_spec(matrix)).trials}
    assert lrs == {"mlp": chosen["mlp"]["lr"], "gru": chosen["gru"]["lr"], "lstm": 5e-4}
