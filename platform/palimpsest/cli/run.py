"""`palimpsest validate`, `run`, `tune` and `bench`: a job from its spec to its run folder.

Exit codes: 0 success, 2 bad input (one readable line per problem, no traceback,
no run folder), 1 a run that failed (its folder says why), 130 interrupted by Ctrl-C
(143 by SIGTERM): summary.json says `interrupted` and `run --resume` finishes the run.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from palimpsest.cli.common import KIND_NAMES, BadInput, app, err, fail_input, load_job, out, warn_void_guarantees
from palimpsest.cli.signals import Interrupts, Terminated
from palimpsest.kinds import KINDS
from palimpsest.spec import SpecError, dump_spec, load_spec


@app.command(help=f"Check job specs (kinds: {KIND_NAMES}) without running anything; exit 0 if all are valid, "
                  "2 otherwise (every problem listed, one line each).")
def validate(jobs: List[Path] = typer.Argument(..., help="job spec YAML files"),
             set_: Optional[List[str]] = typer.Option(None, "--set", help="override a field in every job, value parsed "
                                                      "as YAML (as for run): --set training.lr=1e-3")) -> None:
    problems = []
    for job in jobs:
        try:
            spec = load_spec(job, set_ or [])
        except SpecError as error:
            problems += error.problems
            continue
        if getattr(spec, "privacy", None) is not None or KINDS[spec.kind].validate_loads_data:
            # δ < 1/N, a batch no larger than a task and a reachable ε depend on the data: load
            # it and calibrate σ as `run` would (it refuses the same specs).
            from palimpsest.data import DataError

            try:
                KINDS[spec.kind].runner.prepare(spec)
            except DataError as error:
                problems.append(f"{job}: {error}")
                continue
        warn_void_guarantees(job, spec)
        out.print(f"ok: {job} (kind: {spec.kind})", highlight=False)
    if problems:
        fail_input(problems)


@app.command(help="Run one job and write its run folder, or finish an interrupted or failed one with --resume. "
                  "Exit codes: 0 done; 1 the run failed (its summary.json says why); 2 bad input (no run folder); "
                  "130 interrupted by Ctrl-C (status interrupted; resume with --resume).")
def run(
    job: Optional[Path] = typer.Argument(None, help=f"job spec YAML of kind {' or '.join(KINDS)} (omit with --resume)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a field, value parsed as YAML: --set training.lr=1e-3"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/<name>-<UTC time>)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join: HOST:PORT (its GCS), ray://HOST:PORT "
                                          "or auto (default: $RAY_ADDRESS, else a local Ray started for this run)"),
    no_ray: bool = typer.Option(False, "--no-ray", help="run the training loop in this process (1 worker), without Ray"),
    resume: Optional[str] = typer.Option(None, "--resume", help="finish an interrupted or failed run folder from its "
                                         "last checkpoint; a folder uploaded to a bucket (s3://BUCKET/runs/NAME) is "
                                         "fetched first, into DIR/NAME with --out DIR (default runs/NAME)"),
) -> None:
    _guarded(job, set_, out_dir, address, no_ray, resume, search=False)


@app.command(help="Search the job's tune: section with Ray Tune: each trial runs the job with sampled values in its "
                  "own run folder under the search folder, which gets trials.csv, best.yaml (a job `palimpsest run` "
                  "accepts), summary.json, plots and report.md. Exit codes as for run; an interrupted search "
                  "(130) continues with --resume, finished trials kept.")
def tune(
    job: Optional[Path] = typer.Argument(None, help="job spec YAML with a tune: section (omit with --resume)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a field, value parsed as YAML: --set tune.num_samples=4"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="search folder (default runs/<name>-tune-<UTC time>)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (as for run)"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue an interrupted search folder (or one "
                                         "uploaded to a bucket, as for run); finished trials are not rerun"),
) -> None:
    _guarded(job, set_, out_dir, address, False, resume, search=True)


def _guarded(job, set_, out_dir, address, no_ray, resume, *, search: bool) -> None:
    with Interrupts() as interrupts:
        try:
            _run(job, set_, out_dir, address, no_ray, resume, interrupts, search=search)
        except KeyboardInterrupt as stop:  # before the run started: loading data, starting Ray
            interrupts.caught()
            err.print("interrupted before the run started" + ("" if resume else "; no run folder was created"),
                      highlight=False, markup=False)
            raise typer.Exit(143 if isinstance(stop, Terminated) else 130)


def _run(job, set_, out_dir, address, no_ray, resume, interrupts: "Interrupts", *, search: bool = False) -> None:
    from palimpsest.run_folder import RunFolder
    from palimpsest.ray_connection import RayUnavailable, check_ray_address, ray_address

    command = "tune" if search else "run"
    submitted = _started_on_cluster()
    if resume is not None:
        if job is not None or set_:
            fail_input(["--resume takes the run folder only: its spec.yaml is the job (no JOB or --set)"])
        resume = _resume_folder(resume, out_dir, search=search)
        if not (resume / "spec.yaml").is_file() or not (resume / "summary.json").is_file():
            fail_input([f"{resume}: not a run folder (needs spec.yaml and summary.json)"])
        previous_run = RunFolder(resume)
        previous = previous_run.read_summary()
        if (previous.get("kind") == "tune") != search:
            fail_input([f"{resume}: a search folder: palimpsest tune --resume {resume}" if not search else
                         f"{resume}: a run folder, not a search's: palimpsest run --resume {resume}"])
        if previous_run.finished:
            fail_input([f"{resume}: this {'search' if search else 'run'} already finished (status ok)"])
        earlier_attempts = list(previous.get("attempts_wall_s") or [])
        job = resume / "spec.yaml"
    elif job is None:
        fail_input(["give a job spec (palimpsest run JOB.yaml) or --resume RUN_DIR"])
    else:
        earlier_attempts = []
    if no_ray and address:
        fail_input(["--address: --no-ray runs without Ray; give one or the other"])
    spec = load_job(job, set_, search=search)
    if not search and getattr(spec, "tune", None) is not None:
        err.print(f"note: {job} has a tune: section; `palimpsest tune {job}` searches it. Running the job as written.",
                  highlight=False, markup=False)
        spec = spec.model_copy(update={"tune": None})
    warn_void_guarantees(job, spec)
    if not no_ray:
        # A dead address fails here, in seconds, before data loading and before ray.init
        # (which would retry for minutes).
        target, origin = ray_address(address)
        if target and target != "local":
            try:
                check_ray_address(target, origin)
            except RayUnavailable as error:
                fail_input([str(error)])
    from palimpsest.data import DataError
    from palimpsest.storage import StorageError

    kind = KINDS[spec.kind]
    runner = kind.runner
    try:
        if no_ray and kind.needs_ray:
            raise BadInput(f"--no-ray: kind {spec.kind} trains with RLlib and Ray Tune, which need Ray")
        if no_ray and spec.scaling.num_workers != 1 and kind.one_worker_without_ray:
            raise BadInput("scaling.num_workers: --no-ray runs one worker; set scaling.num_workers=1")
        # (a search checks the job's data here, before any folder; each trial prepares its own)
        _check_storage(spec)  # seconds; preparing the data can take minutes
        prepared = runner.prepare(spec, saved_tokenizer=(resume / "tokenizer") if resume and not search else None)
        interrupts.check()
        if not no_ray:
            _start_ray(spec, address, prepared, search=search)
            interrupts.reassert()
            interrupts.check()
    except RayUnavailable as error:
        fail_input([str(error)])
    except (DataError, BadInput, FileExistsError, StorageError) as error:
        fail_input([f"{job}: {error}"])
    try:
        folder = RunFolder(resume.resolve()) if resume else \
            RunFolder.create(f"{spec.name}-tune" if search else spec.name, out_dir)
    except FileExistsError as error:
        fail_input([f"{job}: {error}"])
    resume_hint = f"palimpsest {command} --resume {folder.path}" + (" --no-ray" if no_ray else "") + (
        f" --address {address}" if address else "")
    if submitted:  # from where the user is: the job's folder on the cluster's storage (or bucket), resubmitted
        resume_hint = (f"palimpsest submit --resume {submitted['run_folder']}" + (" --tune" if search else "")
                       + f" --address {submitted['address']}"
                       + (f" --token-file {submitted['token_file']}" if submitted.get("token_file") else ""))
    started = None
    try:
        folder.start(kind="tune" if search else spec.kind, name=spec.name, seed=spec.seed,
                     spec_yaml=None if resume else dump_spec(spec), resumed=resume is not None,
                     attempts_wall_s=earlier_attempts)
        if getattr(spec, "tracking", None) is not None and not search:  # (a search tracks each trial: tune.py)
            from palimpsest.tracking import Tracker

            folder.tracker = Tracker.open(spec.tracking, name=spec.name, folder=folder.path, spec=spec)
        out.print(f"{'search' if search else 'run'} folder: {folder.path}", highlight=False)
        started = time.perf_counter()
        interrupts.check()
        from palimpsest import progress

        with progress.display(out):  # a progress display with ETA on a terminal, the lines otherwise
            if search:
                from palimpsest.tune import run_search

                summary = run_search(spec, folder, resume=resume is not None)
            else:
                summary = runner.run(spec, prepared, folder, use_ray=not no_ray)
        if search and interrupts.requested:  # trials that Ctrl-C reached end as errors: the resume reruns them
            raise KeyboardInterrupt
        interrupts.caught()  # the run is done: a late Ctrl-C must not cut its folder short
    except (KeyboardInterrupt, Exception, SystemExit) as error:
        interrupts.caught()  # from here a second Ctrl-C cannot cut the folder's last words short
        if isinstance(error, KeyboardInterrupt) or interrupts.requested:
            # (an interrupt can also surface as another error: Ray Train's actors torn down by it)
            sigterm = isinstance(error, Terminated) or interrupts.requested == signal.SIGTERM
            what = "SIGTERM" if sigterm else "Ctrl-C (SIGINT)"
            # (Ray's actors end once the summary says so: no more progress lines or checkpoints after it)
            folder.interrupt(f"interrupted by {what}; resume with: {resume_hint}", stop=None if no_ray else _stop_ray,
                             attempts_wall_s=earlier_attempts + [_since(started)], **_storage_record(spec, folder))
            _upload(folder, spec, finished=False)
            err.print(f"interrupted; resume with: {resume_hint}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(143 if sigterm else 130)
        # the run failed: record why, then exit 1
        name = type(error).__name__ + (f"({error.code})" if isinstance(error, SystemExit) else "")
        folder.fail(f"{name}: {error}", attempts_wall_s=earlier_attempts + [_since(started)],
                    **_storage_record(spec, folder))
        _upload(folder, spec, finished=False)
        err.print(traceback.format_exc(), highlight=False, markup=False)
        err.print(f"[red]run failed:[/red] {escape(f'{name}: {error}')}\nsee {folder.path / 'summary.json'}; "
                  f"finish it with: {escape(resume_hint)}")
        raise typer.Exit(1)
    summary["resumed"] = resume is not None
    if earlier_attempts:  # the run's cost includes the attempts it finishes
        summary["cost"]["wall_s"] = round(summary["cost"]["wall_s"] + sum(earlier_attempts), 3)
    summary["attempts_wall_s"] = earlier_attempts + [_since(started)]
    summary.update(_storage_record(spec, folder))
    folder.finish(summary)
    _print_results(summary, folder.path)
    _upload(folder, spec, finished=True)


CLUSTER_IMPORTS = ("yaml", "numpy", "torch", "transformers", "ray.train", "ray.tune", "gymnasium")


def _started_on_cluster() -> dict | None:
    """In a job sent by `palimpsest submit`: check the head's Python runs this version, then say so (the line
    `submit` waits for). None when not submitted."""
    import importlib
    import importlib.metadata
    import platform as python_platform

    from palimpsest import __version__
    from palimpsest.submit import STARTED, SUBMITTED_ENV

    raw = os.environ.get(SUBMITTED_ENV)
    if not raw:
        return None
    context = json.loads(raw)
    import ray

    problems = []
    for name in CLUSTER_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError as error:
            problems.append(f"the cluster's Python ({sys.executable}) cannot import {name}: {error}")
    try:
        installed = importlib.metadata.version("palimpsest")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed and installed != context["version"]:
        problems.append(f"the cluster's Python has palimpsest {installed} installed, this is {context['version']} "
                        "(its dependencies may differ): reinstall it there (`pip install -e .` on every node, or "
                        "`ray up cluster.yaml` again)")
    if ray.__version__ != context["ray"]:
        problems.append(f"the cluster runs Ray {ray.__version__}, the submitting machine {context['ray']}: install the "
                        "same Ray on both")
    if problems:
        fail_input(problems)
    out.print(f"{STARTED}: palimpsest {__version__}, Python {python_platform.python_version()}, "
              f"Ray {ray.__version__} ({sys.executable})", highlight=False, markup=False, soft_wrap=True)
    from palimpsest.submit import package_versions

    here, there = package_versions(), context.get("packages") or {}
    differ = [f"{name} {here[name] or 'absent'} (submitted from {there[name] or 'absent'})"
              for name in here if name in there and here[name] != there[name]]
    if differ:  # the code is the submitter's (py_modules); the libraries under it are the cluster's
        out.print(f"[palimpsest] note: the cluster's {', '.join(differ)}: results may differ from a run on the submitting machine",
                  highlight=False, markup=False, soft_wrap=True)
    return context


def _start_ray(spec, address: str | None, prepared=None, *, search: bool = False) -> None:
    """Start or join Ray, then check the cluster holds the job (or wait while its autoscaler grows it)."""
    from palimpsest.ray_connection import RayUnavailable, init_ray, ray_address
    from palimpsest.scaling import ClusterTooSmall, check_cluster

    try:
        init_ray(address)
    except RayUnavailable:
        raise
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise BadInput(f"cannot start Ray here: {error}") from None
    target, _ = ray_address(address)
    try:
        check_cluster(spec, search=search, prepared=prepared, local=not target or target == "local",
                      say=lambda line: out.print(f"[palimpsest] {line}", highlight=False, markup=False,
                                                 soft_wrap=True))
    except ClusterTooSmall as error:
        raise BadInput(str(error)) from None


def _since(started) -> float:
    return round(time.perf_counter() - started, 3) if started is not None else 0.0


def _stop_ray() -> None:
    try:
        import ray

        ray.shutdown()
    except Exception:  # noqa: BLE001 - exiting ends them too
        pass


def _resume_folder(given: str, out_dir: Path | None, *, search: bool) -> Path:
    """The folder to resume: the path given, or a bucket's copy fetched into --out (default runs/NAME)."""
    from palimpsest.storage import StorageError, check_storage_path, fetch_run_folder, is_uri, join, name_of, read_text

    try:
        uri = check_storage_path(given, "--resume")  # (s3:/bucket, a slash short of a URI, is named as such)
    except StorageError as error:
        fail_input([str(error)])
    if not is_uri(given):
        if out_dir:
            fail_input(["--out: a run resumes in its own folder; --out only names where a bucket's copy goes"])
        return Path(given)
    try:
        summary = read_text(join(uri, "summary.json"))
    except StorageError as error:
        fail_input([str(error)])
    except OSError as error:  # the bucket's client: no such bucket, no access, unreachable
        fail_input([f"--resume: {given}: cannot read it ({str(error).splitlines()[0]})"])
    if summary is None:
        fail_input([f"--resume: {given}: no run folder there (no summary.json); palimpsest jobs lists where each "
                     "job's folder went"])
    status = json.loads(summary).get("status")
    if status == "ok":
        fail_input([f"--resume: {given}: this {'search' if search else 'run'} already finished (status ok)"])
    # Under its own name: the run's checkpoints on storage are found by it (STORAGE/NAME/).
    destination = (Path(out_dir) if out_dir else Path("runs")) / name_of(uri)
    if destination.exists() and any(destination.iterdir()):
        spec = destination / "spec.yaml"
        if spec.is_file() and spec.read_text() == read_text(join(uri, "spec.yaml")):  # where it ran (the head)
            out.print(f"resuming {destination}, this machine's copy of {given}", highlight=False, soft_wrap=True)
            return destination
        fail_input([f"--out: {destination} already holds another run's files; give --out another parent folder"])
    try:
        fetch_run_folder(uri, destination)
    except OSError as error:
        fail_input([f"--resume: {given}: fetching it failed ({str(error).splitlines()[0]})"])
    out.print(f"fetched {given} into {destination}", highlight=False, soft_wrap=True)
    return destination


def _check_storage(spec) -> None:
    """A bucket storage_path is written to before any folder exists (StorageError: exit 2)."""
    from palimpsest.storage import check_writable, is_uri

    storage = getattr(spec, "storage_path", None)
    if is_uri(storage):
        check_writable(storage)


def _storage_record(spec, folder) -> dict:
    """Where the run's checkpoints (and, for a URI storage_path, its uploaded folder) are."""
    from palimpsest.storage import is_uri, join

    storage = getattr(spec, "storage_path", None)
    if storage is None:
        return {}
    record = {"checkpoints": storage}
    if is_uri(storage):
        record["run_folder"] = join(storage, folder.path.name)
    return {"storage": record}


def _upload(folder, spec, *, finished: bool) -> None:
    """A URI storage_path gets the run folder beside the checkpoints once the run ends (ok, failed or interrupted)."""
    from palimpsest.storage import finish_upload, is_uri

    storage = getattr(spec, "storage_path", None)
    if not is_uri(storage):
        return
    try:
        where = finish_upload(folder.path, storage, finished=finished)
    except Exception as error:  # noqa: BLE001 - the local folder is complete; say what to copy by hand
        err.print(f"warning: the run folder stays at {folder.path}; uploading it to {storage} failed: "
                  f"{type(error).__name__}: {error}", highlight=False, markup=False)
        return
    if finished:
        out.print(f"run folder uploaded to {where}", highlight=False, soft_wrap=True)
    else:
        err.print(f"run folder uploaded to {where}; to resume it on any machine: palimpsest "
                  f"{'tune' if getattr(spec, 'tune', None) is not None else 'run'} --resume {shlex.quote(where)}",
                  highlight=False, markup=False, soft_wrap=True)


def _print_results(summary: dict, path: Path) -> None:
    from palimpsest.report import results_after, results_rows

    header, rows = results_rows(summary)
    after = results_after(summary)
    table = Table(title=f"{summary['name']} — results{after}")
    for column in header:
        table.add_column(column, justify="left" if column == "split" else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    cost = summary.get("cost", {})
    tokens = f" · {cost['train_tokens']} training tokens" if cost.get("train_tokens") is not None else ""
    out.print(f"wall {cost.get('wall_s')} s{tokens} · run folder {path}", highlight=False)
    for warning in summary.get("warnings") or []:
        err.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    if summary.get("kind") == "tune" and summary.get("best_result") is None:
        out.print("no trial ran (a Poisson selection drew none): nothing to release", highlight=False)
    elif summary.get("kind") == "tune":
        best = summary["best_result"]
        values = ", ".join(f"{k} {v:.4g}" for k, v in best.items() if isinstance(v, (int, float)))
        out.print(f"best: trial {summary['best_trial']} ({values}) · rerun it: palimpsest run {path / 'best.yaml'}",
                  highlight=False)


@app.command(help="Run the benchmarks of every kind: bench spec in PATHS (folders: their *.yaml; default "
                  "jobs/bench) as one bench job: one run folder, one table, bench.json and plots/bench.png. "
                  "Exit codes as for run.")
def bench(
    paths: Optional[List[Path]] = typer.Argument(None, help="bench specs or folders of them (default: jobs/bench)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/bench-<UTC time>)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (as for run)"),
    no_ray: bool = typer.Option(False, "--no-ray", help="skip the cases that need Ray"),
) -> None:
    import tempfile

    import yaml

    files: list[Path] = []
    for path in paths or [Path("jobs/bench")]:
        if path.is_dir():
            found = sorted(path.glob("*.yaml"))
            if not found:
                fail_input([f"{path}: no *.yaml bench specs in this folder"])
            files += found
        elif path.is_file():
            files.append(path)
        else:
            fail_input([f"{path}: no such file or folder"])
    problems, benchmarks = [], []
    for file in files:
        try:
            spec = load_spec(file, [])
        except SpecError as error:
            problems += error.problems
            continue
        if spec.kind != "bench":
            problems.append(f"{file}: kind: {spec.kind}; palimpsest bench runs kind: bench specs only")
            continue
        benchmarks += [b.model_dump(mode="json") for b in spec.benchmarks]
    if problems:
        fail_input(problems)
    with tempfile.TemporaryDirectory(prefix="palimpsest-bench-") as scratch:
        joined = Path(scratch) / "bench.yaml"
        joined.write_text(yaml.safe_dump({"kind": "bench", "name": "bench", "benchmarks": benchmarks},
                                         sort_keys=False))
        _guarded(joined, None, out_dir, address, no_ray, None, search=False)
