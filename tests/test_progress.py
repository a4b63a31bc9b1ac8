"""Progress with ETA (issue 25, item 4) and the counters that lied (item 6): `palimpsest.progress`, the Tune and rl
callbacks, the loop's step lines and display rows, the ledger's counts."""

from __future__ import annotations

import io
import logging
import re
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
from rich.console import Console

from palimpsest import progress
from palimpsest.train.config import NAIVE, Optimisation
from palimpsest.train.loop import run_without_ray

from synthetic import loop_config

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(force_terminal=True, file=buffer, width=150), buffer


def plain() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=150), buffer


def shown(buffer: io.StringIO) -> str:
    return ANSI.sub("", buffer.getvalue())


# ----------------------------------------------------------------------------- lines and displays


def test_without_a_display_a_line_is_todays_line_on_stdout(capsys):
    progress.say("sweep point epsilon-8")
    progress.warn("trial folder t not uploaded")
    progress.begin("k", "trials", 3)  # no display: events are dropped, lines are the whole story
    progress.update("k", done=1)
    assert capsys.readouterr().out == "[palimpsest] sweep point epsilon-8\n[palimpsest] warning: trial folder t not " \
                                      "uploaded\n"


def test_lines_do_not_reach_the_root_logger():
    """Ray Train's workers give the root logger a console handler: a propagating line would show twice."""
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logging.getLogger().addHandler(handler)
    try:
        progress.say("once")
    finally:
        logging.getLogger().removeHandler(handler)
    assert seen == []


def test_not_a_terminal_shows_todays_lines_and_no_display():
    console, buffer = plain()
    with progress.display(console):
        progress.say("search: random, scheduler fifo, 4 sample(s)")
        progress.begin("k", "trials", 4)
        progress.update("k", done=1, note="acc 0.5")
        progress.say("trial t1 done (1/4 trials)")
    assert buffer.getvalue() == ("[palimpsest] search: random, scheduler fifo, 4 sample(s)\n"
                                 "[palimpsest] trial t1 done (1/4 trials)\n")


def test_a_terminal_shows_done_of_total_with_an_eta_and_the_lines_above():
    console, buffer = terminal()
    with progress.display(console) as display:
        progress.say("search: random")
        progress.begin("k", "trials", 4)
        time.sleep(0.3)
        progress.update("k", done=1, note="acc 0.512")
        time.sleep(0.6)  # a refresh or two
        assert display.rows() == [{"key": "k", "description": "trials", "done": 1, "total": 4, "visible": True}]
    text = shown(buffer)
    assert "[palimpsest] search: random" in text
    assert re.search(r"trials .*1/4 .*ETA \d+:\d\d:\d\d acc 0\.512", text), text[-600:]


def test_eta_is_the_remaining_units_at_the_rate_so_far():
    task = SimpleNamespace(total=10, completed=4, finished=False, elapsed=20.0, fields={"base": 0})
    assert progress._eta(task) == "ETA 0:00:30"  # 6 left at 5 s each
    resumed = SimpleNamespace(total=10, completed=6, finished=False, elapsed=20.0, fields={"base": 4})
    assert progress._eta(resumed) == "ETA 0:00:40"  # units a resume found done are not this attempt's speed
    assert progress._eta(SimpleNamespace(total=10, completed=0, finished=False, elapsed=3.0, fields={})) \
        == "ETA -:--:--"
    assert progress._eta(SimpleNamespace(total=None, completed=3, finished=False, elapsed=3.0, fields={})) == ""


def test_an_ended_transient_row_is_hidden_and_a_kept_one_stays_at_its_count():
    console, _ = terminal()
    with progress.display(console) as display:
        progress.begin("steps", "task 1/1 steps", 40, transient=True)
        progress.update("steps", done=40)
        progress.end("steps")
        progress.begin("points", "sweep points", 3, done=1)
        progress.update("points", advance=2)
        progress.end("points")
        progress.begin("trials", "trials", 12)
        progress.update("trials", done=8)
        progress.end("trials")  # a search its time budget stopped: at its count, not full
        rows = {row["key"]: row for row in display.rows()}
        stopped = next(t for t in display.progress.tasks if t.description == "trials")
    assert rows["steps"]["visible"] is False
    assert rows["points"] == {"key": "points", "description": "sweep points", "done": 3, "total": 3, "visible": True}
    assert rows["trials"]["done"] == 8 and progress._eta(stopped) == "stopped"


def test_the_display_is_removed_after_the_block(capsys):
    console, buffer = plain()
    with progress.display(console):
        pass
    progress.say("after")
    assert capsys.readouterr().out == "[palimpsest] after\n" and buffer.getvalue() == ""


# ----------------------------------------------------------------------------- counters that lied


def trial(trial_id: str, status: str = "RUNNING", finished: bool = True):
    return SimpleNamespace(trial_id=trial_id, status=status, config={"training.lr": 0.001},
                           last_result={"finished": finished}, local_path=f"/tmp/{trial_id}")


def search_spec(num_samples: int = 2, selection: str = "compose", grid=(1e-3, 1e-2, 1e-1)):
    space = {"training.lr": {"grid": list(grid)}} if grid else {"training.lr": {"loguniform": [1e-4, 1e-2]}}
    return SimpleNamespace(kind="train", tune=SimpleNamespace(num_samples=num_samples, private_selection=selection,
                                                              space=space))


def test_the_search_total_is_num_samples_per_grid_point_and_secret_for_poisson():
    from palimpsest.tune import search_total

    assert search_total(search_spec(2)) == 6
    assert search_total(search_spec(4, grid=None)) == 4
    assert search_total(search_spec(4, selection="poisson", grid=None)) is None


def test_trials_done_count_against_the_searchs_total_not_the_trials_made_so_far(capsys):
    """Was `done (1/2 trials)` then `(2/3 trials)`: Tune makes trials as the search goes."""
    from palimpsest.tune import _progress_table

    callback = _progress_table(search_spec(2), ["final.train.loss"], budgets=None, name="s")
    console, _ = terminal()
    with progress.display(console) as display:
        callback.setup(total_num_samples=6)
        first, second, third = trial("t1"), trial("t2"), trial("t3")
        callback.on_trial_complete(1, [first, second], first)
        first.status = "TERMINATED"
        callback.on_trial_complete(2, [first, second, third], second)
        rows = display.rows()
    lines = [line for line in capsys.readouterr().out.splitlines() if "done" in line]
    assert rows == [{"key": "s trials", "description": "trials", "done": 2, "total": 6, "visible": True}]
    console, buffer = plain()
    with progress.display(console):
        callback.on_trial_complete(2, [first, second, third], second)
    assert buffer.getvalue() == "[palimpsest] trial t2 done (2/6 trials)\n"
    assert lines == []  # (shown by the display's console, not stdout)


def test_a_poisson_search_counts_its_trials_without_a_total():
    from palimpsest.tune import _progress_table

    callback = _progress_table(search_spec(4, selection="poisson", grid=None), ["final.train.loss"], budgets=None)
    first = trial("t1", finished=False)
    console, buffer = plain()
    with progress.display(console):
        callback.on_trial_complete(1, [first, trial("t2")], first)
    assert buffer.getvalue() == "[palimpsest] trial t1 done (stopped early) (1 trial done)\n"


def test_rl_trials_count_against_the_benchmarks_trials():
    from palimpsest.runners.rl import _progress_callback

    callback = _progress_callback(8, "run")
    first = SimpleNamespace(config={"trial": {"label": "mlp-t-s0"}}, status="RUNNING", local_path="/tmp/x")
    console, buffer = terminal()
    with progress.display(console) as display:
        callback.setup()
        callback.on_trial_complete(1, [first], first)
        rows = display.rows()
    assert "[palimpsest] trial mlp-t-s0 finished (1/8)" in shown(buffer)
    assert rows == [{"key": "run trials", "description": "trials", "done": 1, "total": 8, "visible": True}]


def test_counts_in_words():
    assert progress.counted(1, "trial") == "1 trial" and progress.counted(0, "trial") == "0 trials"
    assert progress.counted(2, "request") == "2 requests"


def test_a_method_with_its_own_schedule_counts_its_own_steps(tmp_path):
    """Was `retrain · task 1/1 step 200/10`: a method trained with another recipe than the run's
    (unlearning's retrain: the target's) said the run's step count."""
    own = replace(NAIVE, name="retrain", optimisation=Optimisation(steps=12, batch_size=8, lr=1e-2,
                                                                      lr_schedule="constant", log_every=6))
    config = loop_config(steps=4, methods=[replace(NAIVE, name="npo"), own], log_every=2, eval_every=None)
    console, buffer = terminal()
    with progress.display(console) as display:
        run_without_ray(config, tmp_path / "run")
        rows = display.rows()
    lines = [line for line in shown(buffer).splitlines() if line.startswith("[palimpsest]")]
    steps = [tuple(map(int, re.search(r"step (\d+)/(\d+)", line).groups())) for line in lines]
    assert [line.split(" · ")[0] for line in lines] == ["[palimpsest] npo"] * 2 + ["[palimpsest] retrain"] * 2
    assert steps == [(2, 4), (4, 4), (6, 12), (12, 12)]
    # one row per task's steps, its total the method's own, hidden once the task ended
    assert [(row["description"], row["done"], row["total"], row["visible"]) for row in rows] == [
        ("npo · task 1/1 steps", 4, 4, False), ("retrain · task 1/1 steps", 12, 12, False)]


# ----------------------------------------------------------------------------- Ray workers


@pytest.mark.integration
def test_a_ray_worker_reaches_the_drivers_display_through_the_channel(ray_session):
    """A worker (another process) finds the display's channel by name and sends without waiting."""
    ray = ray_session

    @ray.remote(num_cpus=0)
    class Worker:
        def work(self):
            from palimpsest import progress as ui

            ui.begin("run/0/0", "task 1/1 steps", 40, transient=True)
            ui.update("run/0/0", done=20, note="train_loss 1.5")
            ui.say("task 1/1 step 20/40")  # the line: the worker's stdout, which Ray streams to the driver
            return True

    console, _ = terminal()
    with progress.display(console) as display:
        worker = Worker.remote()
        assert ray.get(worker.work.remote(), timeout=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(r["done"] == 20 for r in display.rows()):
            time.sleep(0.2)
        rows = display.rows()
    ray.kill(worker)
    assert rows == [{"key": "run/0/0", "description": "task 1/1 steps", "done": 20, "total": 40, "visible": True}]
    with pytest.raises(ValueError):  # the channel goes with the display
        ray.get_actor(progress.CHANNEL_NAME)


@pytest.mark.integration
def test_a_ray_train_runs_steps_show_on_the_drivers_display(tmp_path, ray_session):
    """The loop's rank 0 sends its task's row at its log points; the lines still come as Ray streams them."""
    from palimpsest.kinds import KINDS
    from palimpsest.run_folder import RunFolder
    from palimpsest.spec import parse_spec

    spec = parse_spec({"kind": "train", "name": "t", "seed": 1,
                       "data": {"source": "factworld", "num_entities": 8, "attributes_per_entity": 3,
                                "split": "retain90"},
                       "training": {"steps": 12, "batch_size": 8, "log_every": 4},
                       "scaling": {"num_workers": 1}})
    runner = KINDS["train"].runner
    prepared = runner.prepare(spec)
    folder = RunFolder.create(spec.name, tmp_path / "run")
    console, _ = terminal()
    with progress.display(console) as display:
        runner.run(spec, prepared, folder, use_ray=True)
        deadline = time.monotonic() + 20  # (the worker's last events may still be on their way to the channel)
        while time.monotonic() < deadline and any(row["visible"] for row in display.rows()):
            time.sleep(0.2)
        rows = display.rows()
    assert [(row["description"], row["done"], row["total"], row["visible"]) for row in rows] == [
        ("task 1/1 steps", 12, 12, False)], rows
