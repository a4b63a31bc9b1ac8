"""The `palimpsest` command. The only module that prints for the user and picks exit codes.

Exit codes: 0 success, 2 bad input (one readable line per problem, no traceback,
no run folder), 1 a run that failed (its folder says why), 130 interrupted by Ctrl-C
(143 by SIGTERM): summary.json says `interrupted` and `run --resume` finishes the run.
"""

from __future__ import annotations

import _thread
import json
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from palimpsest.spec import JOB_KINDS, SpecError, dump_spec, load_spec

KINDS = ", ".join(JOB_KINDS)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help=f"Palimpsest: fine-tune language models on Ray and measure what they keep and forget. "
                       f"Job kinds: {KINDS}. Exit codes: 0 done, 1 the run failed, 2 bad input, "
                       f"130 interrupted (resumable with run --resume).")
# Not a terminal (CI logs, pipes): rich would assume 80 columns and cut the results table.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class BadInput(Exception):
    """Bad input found after the spec parsed (data, resources): exit 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or `kill`) during a run: recorded like Ctrl-C, exit 143."""


def _warn_void_guarantees(job, spec) -> None:
    """One warning line per privacy section that opted into the public seed (the guarantee is void)."""
    from palimpsest.spec.common import GUARANTEE_VOID_WARNING, void_guarantees

    for path in void_guarantees(spec):
        err.print(f"warning: {job}: {path}: {GUARANTEE_VOID_WARNING}", highlight=False, markup=False, soft_wrap=True)


def _fail_input(lines: list[str]) -> None:
    for line in lines:
        err.print(f"[red]error:[/red] {escape(str(line))}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


@app.command(help=f"Check job specs (kinds: {KINDS}) without running anything; exit 0 if all are valid, "
                  "2 otherwise (every problem listed, one line each).")
def validate(jobs: List[Path] = typer.Argument(..., help="job spec YAML files")) -> None:
    problems = []
    for job in jobs:
        try:
            spec = load_spec(job)
        except SpecError as error:
            problems += error.problems
            continue
        if getattr(spec, "privacy", None) is not None or spec.kind in ("unlearn", "rl"):
            # δ < 1/N, a batch no larger than a task and a reachable ε depend on the data: load
            # it and calibrate σ as `run` would (it refuses the same specs).
            from palimpsest.data import DataError
            from palimpsest.runners import RUNNERS

            try:
                RUNNERS[spec.kind].prepare(spec)
            except DataError as error:
                problems.append(f"{job}: {error}")
                continue
        _warn_void_guarantees(job, spec)
        out.print(f"ok: {job} (kind: {spec.kind})", highlight=False)
    if problems:
        _fail_input(problems)


@app.command(help="Run one job and write its run folder, or finish an interrupted or failed one with --resume. "
                  "Exit codes: 0 done; 1 the run failed (its summary.json says why); 2 bad input (no run folder); "
                  "130 interrupted by Ctrl-C (status interrupted; resume with --resume).")
def run(
    job: Optional[Path] = typer.Argument(None, help=f"job spec YAML of kind {' or '.join(JOB_KINDS)} (omit with --resume)"),
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
    with _Interrupts() as interrupts:
        try:
            _run(job, set_, out_dir, address, no_ray, resume, interrupts, search=search)
        except KeyboardInterrupt as stop:  # before the run started: loading data, starting Ray
            interrupts.caught()
            err.print("interrupted before the run started" + ("" if resume else "; no run folder was created"),
                      highlight=False, markup=False)
            raise typer.Exit(143 if isinstance(stop, Terminated) else 130)


def _run(job, set_, out_dir, address, no_ray, resume, interrupts: "_Interrupts", *, search: bool = False) -> None:
    from palimpsest.runtime import RayUnavailable, RunFolder, check_ray_address, ray_address

    command = "tune" if search else "run"
    submitted = _started_on_cluster()
    if resume is not None:
        if job is not None or set_:
            _fail_input(["--resume takes the run folder only: its spec.yaml is the job (no JOB or --set)"])
        resume = _resume_folder(resume, out_dir, search=search)
        if not (resume / "spec.yaml").is_file() or not (resume / "summary.json").is_file():
            _fail_input([f"{resume}: not a run folder (needs spec.yaml and summary.json)"])
        previous = RunFolder(resume).read_summary()
        if (previous.get("kind") == "tune") != search:
            _fail_input([f"{resume}: a search folder: palimpsest tune --resume {resume}" if not search else
                         f"{resume}: a run folder, not a search's: palimpsest run --resume {resume}"])
        if previous.get("status") == "ok":
            _fail_input([f"{resume}: this {'search' if search else 'run'} already finished (status ok)"])
        earlier_attempts = list(previous.get("attempts_wall_s") or [])
        job = resume / "spec.yaml"
    elif job is None:
        _fail_input(["give a job spec (palimpsest run JOB.yaml) or --resume RUN_DIR"])
    else:
        earlier_attempts = []
    if no_ray and address:
        _fail_input(["--address: --no-ray runs without Ray; give one or the other"])
    spec = _load_job(job, set_, search=search)
    if not search and getattr(spec, "tune", None) is not None:
        err.print(f"note: {job} has a tune: section; `palimpsest tune {job}` searches it. Running the job as written.",
                  highlight=False, markup=False)
        spec = spec.model_copy(update={"tune": None})
    _warn_void_guarantees(job, spec)
    if not no_ray:
        # A dead address fails here, in seconds, before data loading and before ray.init
        # (which would retry for minutes).
        target, origin = ray_address(address)
        if target and target != "local":
            try:
                check_ray_address(target, origin)
            except RayUnavailable as error:
                _fail_input([str(error)])
    from palimpsest.data import DataError
    from palimpsest.runners import RUNNERS
    from palimpsest.storage import StorageError

    runner = RUNNERS[spec.kind]
    try:
        if no_ray and getattr(runner, "NEEDS_RAY", False):
            raise BadInput(f"--no-ray: kind {spec.kind} trains with RLlib and Ray Tune, which need Ray")
        if no_ray and spec.scaling.num_workers != 1 and spec.kind != "bench":  # a bench skips its Ray cases
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
        _fail_input([str(error)])
    except (DataError, BadInput, FileExistsError, StorageError) as error:
        _fail_input([f"{job}: {error}"])
    try:
        folder = RunFolder(resume.resolve()) if resume else \
            RunFolder.create(f"{spec.name}-tune" if search else spec.name, out_dir)
    except FileExistsError as error:
        _fail_input([f"{job}: {error}"])
    resume_hint = f"palimpsest {command} --resume {folder.path}" + (" --no-ray" if no_ray else "") + (
        f" --address {address}" if address else "")
    if submitted:  # from where the user is: the job's folder on the cluster's storage (or bucket), resubmitted
        resume_hint = (f"palimpsest submit --resume {submitted['run_folder']}" + (" --tune" if search else "")
                       + f" --address {submitted['address']}"
                       + (f" --token-file {submitted['token_file']}" if submitted.get("token_file") else ""))
    started = None
    try:
        if not resume:
            folder.write_spec(dump_spec(spec))
            folder.write_env()
        folder.write_summary({"status": "running", "kind": "tune" if search else spec.kind, "name": spec.name,
                              "seed": spec.seed, "resumed": resume is not None, "attempts_wall_s": earlier_attempts})
        out.print(f"{'search' if search else 'run'} folder: {folder.path}", highlight=False)
        started = time.perf_counter()
        interrupts.check()
        if search:
            from palimpsest.tune import run_search

            summary = run_search(spec, folder, resume=resume is not None)
            if interrupts.requested:  # trials that Ctrl-C reached end as errors: the resume reruns them
                raise KeyboardInterrupt
        else:
            summary = runner.run(spec, prepared, folder, use_ray=not no_ray)
        interrupts.caught()  # the run is done: a late Ctrl-C must not cut its folder short
    except (KeyboardInterrupt, Exception, SystemExit) as error:
        interrupts.caught()  # from here a second Ctrl-C cannot cut the folder's last words short
        if isinstance(error, KeyboardInterrupt) or interrupts.requested:
            # (an interrupt can also surface as another error: Ray Train's actors torn down by it)
            sigterm = isinstance(error, Terminated) or interrupts.requested == signal.SIGTERM
            what = "SIGTERM" if sigterm else "Ctrl-C (SIGINT)"
            _finish_failed(folder, spec, "interrupted", f"interrupted by {what}; resume with: {resume_hint}",
                           attempts=earlier_attempts + [_since(started)], stop_ray=not no_ray,
                           kind="tune" if search else None)
            err.print(f"interrupted; resume with: {resume_hint}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(143 if sigterm else 130)
        # the run failed: record why, then exit 1
        name = type(error).__name__ + (f"({error.code})" if isinstance(error, SystemExit) else "")
        _finish_failed(folder, spec, "failed", f"{name}: {error}", attempts=earlier_attempts + [_since(started)],
                       kind="tune" if search else None)
        err.print(traceback.format_exc(), highlight=False, markup=False)
        err.print(f"[red]run failed:[/red] {escape(f'{name}: {error}')}\nsee {folder.path / 'summary.json'}; "
                  f"finish it with: {escape(resume_hint)}")
        raise typer.Exit(1)
    summary["resumed"] = resume is not None
    if earlier_attempts:  # the run's cost includes the attempts it finishes
        summary["cost"]["wall_s"] = round(summary["cost"]["wall_s"] + sum(earlier_attempts), 3)
    summary["attempts_wall_s"] = earlier_attempts + [_since(started)]
    summary.update(_storage_record(spec, folder))
    folder.write_summary(summary)
    from palimpsest.report import write_report

    write_report(folder)
    _print_results(summary, folder.path)
    _upload(folder, spec, finished=True)


_REAL_SIGNAL = signal.signal


class _Interrupts:
    """While active, Ctrl-C (and SIGTERM) end up as a KeyboardInterrupt (`Terminated`) or a
    failed Ray Train run that the CLI records as `interrupted`, whatever handler a library
    installs meanwhile.

    Ray Train's `fit()` installs its own SIGINT handler (ray/train/v2/api/data_parallel_trainer.py,
    `_register_sigint_handler`): it aborts the run and calls sys.exit(0) inside the handler,
    and the process ends with status 1 before the CLI can mark the folder. So while this
    block runs `signal.signal` keeps our handlers (Ray's DeferSigint patches it the same way)
    and remembers the library's SIGINT handler.

    A KeyboardInterrupt raised inside Ray's own code can be dropped by its C++ `ray.get`, or
    leave the core worker half set up (a segfault at exit). So when the main thread is inside
    Ray, the first signal stops the Ray Train run from a helper thread (`_stop_library_run`:
    `fit()` then raises, and the CLI records `interrupted`), and the interrupt itself is raised
    only once the main thread is back in our code (`check()` at the safe points, a retry every
    RETRY_S) — or at once on a second Ctrl-C, or after FORCE_AFTER_S.
    """

    RETRY_S = 1.0
    FORCE_AFTER_S = 15.0

    def __init__(self):
        self.requested: int | None = None  # the signal received, if any
        self._since = 0.0
        self._nudged = False
        self._aborting = False
        self._caught = threading.Event()
        self._previous: dict = {}
        self._library_sigint = None

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = _REAL_SIGNAL(signum, self._handle)

        def guarded(signum, handler):
            if signum in self._previous:
                if signum == signal.SIGINT and callable(handler) and handler is not self._handle:
                    self._library_sigint = handler
                return self._handle  # keep ours; the caller sees what it would have replaced
            return _REAL_SIGNAL(signum, handler)

        signal.signal = guarded
        return self

    def __exit__(self, *exc) -> None:
        self._caught.set()
        if self._previous:
            signal.signal = _REAL_SIGNAL
            for signum, handler in self._previous.items():
                _REAL_SIGNAL(signum, handler if handler is not None else signal.SIG_DFL)

    def check(self) -> None:
        """At a safe point: raise the interrupt received while the main thread was inside Ray."""
        if self.requested is not None and not self._caught.is_set():
            raise Terminated if self.requested == signal.SIGTERM else KeyboardInterrupt

    def reassert(self) -> None:
        """Put our handlers back at the OS level: Ray's core worker installs a C++ handler for
        SIGTERM (a stack dump, then abort) under Python's feet when it connects."""
        for signum in self._previous:
            _REAL_SIGNAL(signum, self._handle)

    def caught(self) -> None:
        """The CLI has the interrupt (or the run ended): ignore further ones while it writes the folder."""
        self._caught.set()
        for signum in self._previous:
            _REAL_SIGNAL(signum, signal.SIG_IGN)

    def _handle(self, signum, frame) -> None:
        if self._caught.is_set():
            return
        nudge, self._nudged = self._nudged, False
        first = self.requested is None
        if first:
            from palimpsest.runtime import INTERRUPTED

            INTERRUPTED.set()
            self.requested, self._since = signum, time.monotonic()
            threading.Thread(target=self._insist, name="palimpsest-interrupt", daemon=True).start()
        forced = (not first and not nudge) or time.monotonic() - self._since > self.FORCE_AFTER_S
        if forced or not _inside_ray(frame):
            raise Terminated if self.requested == signal.SIGTERM else KeyboardInterrupt
        if first:
            sys.stderr.write("\nstopping (Ctrl-C again to stop at once)\n")
        if self._library_sigint is not None and not self._aborting:  # Ray Train's abort, off the main thread
            self._aborting = True
            threading.Thread(target=_stop_library_run, args=(self._library_sigint,),
                             name="palimpsest-abort", daemon=True).start()

    def _insist(self) -> None:
        while not self._caught.wait(self.RETRY_S):
            self._nudged = True
            _thread.interrupt_main(self.requested)


def _stop_library_run(handler) -> None:
    """Stop what a library's SIGINT handler would stop, from a helper thread.

    Ray Train's handler closes over the run's controller actor: killing it takes the worker
    group with it and `fit()` raises at once (the handler's own graceful abort can take 15 s
    here). Without an actor handle in reach, call the handler itself.
    """
    try:
        import ray
        from ray.actor import ActorHandle

        for cell in getattr(handler, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(value, ActorHandle):
                ray.kill(value, no_restart=True)
                return
    except Exception:  # noqa: BLE001 - fall back to the handler
        pass
    try:
        handler(signal.SIGINT, None)
    except BaseException:  # noqa: BLE001 - Ray's handler ends with sys.exit(0); the CLI records the rest
        pass


def _inside_ray(frame) -> bool:
    """Whether the main thread, stopped at `frame`, is running Ray's code."""
    ray = sys.modules.get("ray")
    if ray is None or not getattr(ray, "__file__", None):
        return False
    root = os.path.dirname(ray.__file__) + os.sep
    while frame is not None:
        if frame.f_code.co_filename.startswith(root):
            return True
        frame = frame.f_back
    return False


# What a submitted job's driver must import before it says it started (the rest of the stack
# loads lazily, minutes later: a head without torch must fail now, not after the data).
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
        _fail_input(problems)
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
    from palimpsest.runtime import RayUnavailable, init_ray, ray_address
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


def _finish_failed(folder, spec, status: str, message: str, *, attempts: list[float], stop_ray: bool = False,
                   kind: str | None = None) -> None:
    folder.write_summary({"status": status, "kind": kind or spec.kind, "name": spec.name, "seed": spec.seed, "error": message,
                          "attempts_wall_s": attempts, **_storage_record(spec, folder)})
    if stop_ray:  # end the run's actors now: no more progress lines or checkpoints after "interrupted"
        try:
            import ray

            ray.shutdown()
        except Exception:  # noqa: BLE001 - exiting ends them too
            pass
    try:
        from palimpsest.report import write_report

        write_report(folder)
    except Exception:  # the report is a courtesy here; the summary already says what happened
        pass
    _upload(folder, spec, finished=False)


def _load_job(job: Path, sets: list[str] | None, *, search: bool):
    """The job with its --set overrides (bad input: exit 2); a search needs a tune: section."""
    try:
        spec = load_spec(job, sets or [])
    except SpecError as error:
        _fail_input(error.problems)
    if search and getattr(spec, "tune", None) is None:
        _fail_input([f"{job}: tune: no search space in this job (add a tune: section; README, \"Hyperparameter "
                     "search\")"])
    return spec


def _resume_folder(given: str, out_dir: Path | None, *, search: bool) -> Path:
    """The folder to resume: the path given, or a bucket's copy fetched into --out (default runs/NAME)."""
    from palimpsest.storage import StorageError, check_storage_path, fetch_run_folder, is_uri, join, name_of, read_text

    try:
        uri = check_storage_path(given, "--resume")  # (s3:/bucket, a slash short of a URI, is named as such)
    except StorageError as error:
        _fail_input([str(error)])
    if not is_uri(given):
        if out_dir:
            _fail_input(["--out: a run resumes in its own folder; --out only names where a bucket's copy goes"])
        return Path(given)
    try:
        summary = read_text(join(uri, "summary.json"))
    except StorageError as error:
        _fail_input([str(error)])
    except OSError as error:  # the bucket's client: no such bucket, no access, unreachable
        _fail_input([f"--resume: {given}: cannot read it ({str(error).splitlines()[0]})"])
    if summary is None:
        _fail_input([f"--resume: {given}: no run folder there (no summary.json); palimpsest jobs lists where each "
                     "job's folder went"])
    status = json.loads(summary).get("status")
    if status == "ok":
        _fail_input([f"--resume: {given}: this {'search' if search else 'run'} already finished (status ok)"])
    # Under its own name: the run's checkpoints on storage are found by it (STORAGE/NAME/).
    destination = (Path(out_dir) if out_dir else Path("runs")) / name_of(uri)
    if destination.exists() and any(destination.iterdir()):
        spec = destination / "spec.yaml"
        if spec.is_file() and spec.read_text() == read_text(join(uri, "spec.yaml")):  # where it ran (the head)
            out.print(f"resuming {destination}, this machine's copy of {given}", highlight=False, soft_wrap=True)
            return destination
        _fail_input([f"--out: {destination} already holds another run's files; give --out another parent folder"])
    try:
        fetch_run_folder(uri, destination)
    except OSError as error:
        _fail_input([f"--resume: {given}: fetching it failed ({str(error).splitlines()[0]})"])
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
    from palimpsest.report import results_rows

    header, rows = results_rows(summary)
    after = f" after {summary['steps']} steps" if summary.get("steps") else \
        f" after {len(summary['requests'])} request(s)" if summary.get("kind") == "unlearn" else ""
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


_ADDRESS_HELP = ("the cluster's job server, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS; with `ray dashboard "
                 "cluster.yaml` open: http://127.0.0.1:8265)")
_TOKEN_HELP = ("file holding the cluster's auth token (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, "
               "~/.ray/auth_token)")


@app.command(help="Submit a job to a Ray cluster (Ray Job Submission): uploads this project as the job's "
                  "working_dir, runs `palimpsest run` (or `tune` with --tune) on the head with its run folder under "
                  "--storage, streams the log and exits with the job's exit code (0 done, 1 failed, 2 bad input, "
                  "130/143 interrupted or stopped). --no-wait returns once the job has started on the head "
                  "(its Python runs palimpsest), printing its id.")
def submit(
    job: Optional[Path] = typer.Argument(None, help="job spec YAML inside this project (it is uploaded with it); "
                                         "omit with --resume"),
    address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP),
    storage: Optional[str] = typer.Option(None, "--storage", help="shared storage every node mounts at the same path, "
                                          "or a bucket (s3://BUCKET/PREFIX, gs://...): the run folder and its "
                                          "checkpoints go there (default: the job's storage_path)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a field, value parsed as YAML"),
    search: bool = typer.Option(False, "--tune", help="run `palimpsest tune` on the job's tune: section"),
    no_wait: bool = typer.Option(False, "--no-wait", help="return once the job has started on the head, printing "
                                 "its id"),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help=_TOKEN_HELP),
    resume: Optional[str] = typer.Option(None, "--resume", help="resume a stopped or failed job's run folder on the "
                                         "cluster: its path on the shared storage or its bucket URI, as `palimpsest "
                                         "jobs` lists it (with --tune for a search)"),
) -> None:
    from palimpsest.submit import START_WAIT_S, SubmitError, await_start, exit_code, follow, resubmit
    from palimpsest.submit import submit as send

    if resume is not None:
        if job is not None or set_ or storage:
            _fail_input(["--resume takes the run folder only: its spec.yaml is the job (no JOB, --set or --storage)"])
        try:
            jobs, sent = resubmit(resume, address=address, search=search, token_file=token_file)
        except SubmitError as error:
            _fail_input([str(error)])
    else:
        if job is None:
            _fail_input(["give a job spec (palimpsest submit JOB.yaml) or --resume RUN_FOLDER"])
        spec = _load_job(job, set_, search=search)
        try:
            jobs, sent = send(job, set_ or [], spec, address=address, storage=storage, search=search,
                              token_file=token_file)
        except SubmitError as error:
            _fail_input([str(error)])
    where = _where(address, token_file)
    err.print(f"sent {sent.job_id}; waiting for it to start on the head (Ray sets up its environment first)",
              highlight=False, markup=False, soft_wrap=True)
    try:  # the head's Python must run us: a job that dies on `import typer` is not "submitted"
        started = await_start(jobs, sent.job_id)
    except SubmitError as error:
        _fail_input([str(error)])
    except KeyboardInterrupt:
        err.print(f"stopped waiting for {sent.job_id} to start; it may still start: palimpsest logs {sent.job_id} "
                  f"--follow{where} · palimpsest stop {sent.job_id}{where}", highlight=False, markup=False)
        raise typer.Exit(130)
    out.print(f"submitted: {sent.job_id}" + ("" if started else f" (not started after {START_WAIT_S:g} s: Ray is "
                                              "still setting up its environment)")
              + f"\nrun folder (on the cluster's storage): {sent.run_folder}", highlight=False, soft_wrap=True)
    if no_wait:
        out.print(f"follow it: palimpsest logs {sent.job_id} --follow{where} · stop it: palimpsest stop "
                  f"{sent.job_id}{where}", highlight=False, soft_wrap=True)
        return
    try:
        status = follow(jobs, sent.job_id, lambda text: out.out(text, end="", highlight=False))
    except KeyboardInterrupt:
        err.print(f"stopped following; the job keeps running on the cluster: palimpsest logs {sent.job_id} --follow"
                  f"{where} · palimpsest stop {sent.job_id}{where}", highlight=False, markup=False)
        raise typer.Exit(130)
    info = jobs.get_job_info(sent.job_id)
    code = exit_code(info)
    out.print(f"job {sent.job_id}: {status} (exit {code}) · run folder {sent.run_folder}", highlight=False)
    raise typer.Exit(code)


def _where(address: str | None, token_file: Path | None) -> str:
    """" --address URL [--token-file F]": what a printed hint needs to reach the same cluster."""
    from palimpsest.submit import SubmitError, dashboard_address

    try:
        url = dashboard_address(address)
    except SubmitError:
        return ""
    return f" --address {url}" + (f" --token-file {token_file}" if token_file else "")


@app.command("jobs", help="List the jobs on a Ray cluster with their status and run folders.")
def jobs_(address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP),
          token_file: Optional[Path] = typer.Option(None, "--token-file", help=_TOKEN_HELP)) -> None:
    from datetime import datetime, timezone

    from palimpsest.submit import METADATA_JOB, METADATA_RUN_FOLDER, SubmitError, client

    try:
        found = client(address, token_file).list_jobs()
    except SubmitError as error:
        _fail_input([str(error)])
    columns = ("job id", "status", "started (UTC)", "job", "run folder")
    table = Table(title=f"{len(found)} job(s)")
    for column in columns:
        table.add_column(column)
    for info in sorted(found, key=lambda i: i.start_time or 0):
        started = datetime.fromtimestamp(info.start_time / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") \
            if info.start_time else ""
        metadata = info.metadata or {}
        table.add_row(info.submission_id or info.job_id or "", str(getattr(info.status, "value", info.status)), started,
                      metadata.get(METADATA_JOB, info.entrypoint or ""), metadata.get(METADATA_RUN_FOLDER, ""))
    if sys.stdout.isatty():
        out.print(table)
        return
    # a pipe or a log: one tab-separated line per job, never a job id or a path cut across lines
    for row in [columns] + [[cell.plain if hasattr(cell, "plain") else str(cell) for cell in cells]
                            for cells in zip(*(column.cells for column in table.columns))]:
        sys.stdout.write("\t".join(row) + "\n")


def _cluster_job(address, token_file, job_id: str):
    """The cluster's job client, once `job_id` is known there (else one line, exit 2)."""
    from palimpsest.submit import SubmitError, client

    try:
        jobs = client(address, token_file)
        _job_info(jobs, job_id)
    except SubmitError as error:
        _fail_input([str(error)])
    return jobs


@app.command(help="Print a cluster job's log (--follow: until it ends, then exit with its exit code).")
def logs(job_id: str = typer.Argument(..., help="the id `palimpsest submit` or `palimpsest jobs` printed"),
         follow_: bool = typer.Option(False, "--follow", "-f", help="stream the log until the job ends"),
         address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP),
         token_file: Optional[Path] = typer.Option(None, "--token-file", help=_TOKEN_HELP)) -> None:
    from palimpsest.submit import exit_code, follow

    jobs = _cluster_job(address, token_file, job_id)
    if not follow_:
        out.out(jobs.get_job_logs(job_id), end="", highlight=False)
        return
    try:
        follow(jobs, job_id, lambda text: out.out(text, end="", highlight=False))
    except KeyboardInterrupt:
        raise typer.Exit(130)
    raise typer.Exit(exit_code(jobs.get_job_info(job_id)))


@app.command(help="Stop a running cluster job (its run folder is marked interrupted; `run --resume` finishes it).")
def stop(job_id: str = typer.Argument(..., help="the id `palimpsest submit` or `palimpsest jobs` printed"),
         address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP),
         token_file: Optional[Path] = typer.Option(None, "--token-file", help=_TOKEN_HELP)) -> None:
    jobs = _cluster_job(address, token_file, job_id)
    stopped = jobs.stop_job(job_id)
    out.print(f"{job_id}: {'stop requested' if stopped else 'already ended'}", highlight=False)


def _job_info(jobs, job_id: str):
    from palimpsest.submit import SubmitError

    try:
        return jobs.get_job_info(job_id)
    except RuntimeError as error:
        if "404" in str(error) or "does not exist" in str(error):
            raise SubmitError(f"{job_id}: no such job on this cluster (palimpsest jobs lists them)") from None
        raise


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run folder")) -> None:
    """(Re)draw the plots and report.md of a run folder."""
    from palimpsest.report import write_report
    from palimpsest.runtime import RunFolder

    if not (run_dir / "summary.json").is_file():
        _fail_input([f"{run_dir}: not a run folder (no summary.json)"])
    path = write_report(RunFolder(run_dir))
    out.print(f"wrote {path}", highlight=False)


@app.command()
def ledger(path: Path = typer.Argument(..., help="a ledger.jsonl (a run folder's, or the one a job names)")) -> None:
    """Print a forget-request ledger: each request's latest status, method, ε and where its model is."""
    from palimpsest.unlearn.ledger import Ledger, LedgerError

    if not path.is_file():
        _fail_input([f"{path}: no ledger there"])
    try:
        state = Ledger(path).state()
    except LedgerError as error:
        _fail_input([str(error)])
    table = Table(title=f"{path} — {len(state)} request(s)")
    for column in ("id", "status", "method", "ε", "items", "items hash", "config", "time", "checkpoint / error"):
        table.add_column(column)
    for record in state.values():
        where = record.get("checkpoint") or record.get("error") or ""
        epsilon = "—" if record.get("epsilon") is None else f"{record['epsilon']:g}"
        config = (record.get("config_hash") or "—")[7:19]
        table.add_row(record["id"], record["status"], record["method"], epsilon, str(record.get("items", "")),
                      record["items_hash"][:19] + "…", config, record.get("time", ""), str(where))
    out.print(table)


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
                _fail_input([f"{path}: no *.yaml bench specs in this folder"])
            files += found
        elif path.is_file():
            files.append(path)
        else:
            _fail_input([f"{path}: no such file or folder"])
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
        _fail_input(problems)
    with tempfile.TemporaryDirectory(prefix="palimpsest-bench-") as scratch:
        joined = Path(scratch) / "bench.yaml"
        joined.write_text(yaml.safe_dump({"kind": "bench", "name": "bench", "benchmarks": benchmarks},
                                         sort_keys=False))
        _guarded(joined, None, out_dir, address, no_ray, None, search=False)


@app.command()
def envs(throughput: bool = typer.Option(False, "--throughput", help="measure steps/s of each batched twin (batch "
                                          "1024 and 8192) against the single Gymnasium env, side by side")) -> None:
    """List the registered memory environments (palimpsest/<Name>-v0) with their parameters and defaults."""
    import inspect

    if throughput:
        _envs_throughput()
        return

    import gymnasium

    import palimpsest_envs

    table = Table(title="memory environments: gymnasium.make(id, **parameters); make_vec(id, num_envs=N, "
                        "vectorization_mode='vector_entry_point') for the batched twin")
    for column in ("id", "parameters (defaults)", "what it is"):
        table.add_column(column)
    for env_id in palimpsest_envs.ENV_IDS:
        entry = gymnasium.spec(env_id).entry_point
        module, name = entry.split(":")
        cls = getattr(__import__(module, fromlist=[name]), name)
        params = [f"{p.name}={p.default!r}" for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name not in ("self", "render_mode")]
        description = inspect.cleandoc(cls.__doc__ or "").split("## Description", 1)[-1].strip().split("\n\n")[0]
        modes = getattr(sys.modules[cls.__module__], "MODES", None)  # defaults that depend on a mode (ColorCubes)
        if modes:
            params.append("None: the mode's — " + "; ".join(
                f"{mode}: " + ", ".join(f"{k}={v}" for k, v in values.items()) for mode, values in modes.items()))
        table.add_row(env_id, ", ".join(params), " ".join(description.split()).split(". ")[0] + ".")
    out.print(table)


def _envs_throughput() -> None:
    from palimpsest.rl.throughput import throughput

    rows = throughput()
    table = Table(title="environment steps/s in this process (pin it to one core with taskset -c 0 for the "
                        "one-core figure); random actions; batches timed in steady state (every sub-env past its "
                        "first block of episode plans)")
    for column in ("id", "single env", "batch 1024", "batch 8192", "8192 vs single", "episodes/sub-env timed"):
        table.add_column(column, justify="left" if column == "id" else "right")
    for row in rows:
        table.add_row(row["env"], f"{row['single'] / 1e6:.2f} M", f"{row[1024] / 1e6:.1f} M",
                      f"{row[8192] / 1e6:.1f} M", f"{row[8192] / row['single']:.0f}×",
                      f"{row[('episodes', 8192)]:.1f}")
    out.print(table)


@app.command("export-tofu")
def export_tofu(out_dir: Path = typer.Argument(..., help="folder to write the TOFU-format files into"),
                entities: int = typer.Option(100, min=3, help="fictitious people (10% are the holdout)"),
                attributes: int = typer.Option(2, min=1, max=8, help="facts per person"),
                seed: int = typer.Option(0, min=0, help="world seed"),
                real_authors: int = typer.Option(100, min=0, help="public authors (real_authors[_perturbed]); 0: "
                                                                  "none, else at least 4"),
                world_facts: int = typer.Option(100, min=0, help="public world facts (world_facts[_perturbed]); 0: "
                                                                 "none, else at least 4")) -> None:
    """Write the fact world as TOFU's files (full, forgetNN[_perturbed], retainNN, retain_perturbed, holdout10,
    real_authors[_perturbed], world_facts[_perturbed])."""
    from palimpsest.data import export_tofu_folder, generate_world

    for name, count in (("--real-authors", real_authors), ("--world-facts", world_facts)):
        if 0 < count < 4:
            _fail_input([f"{name}: 0 (none) or at least 4 (each item's 3 wrong options are other items' answers); "
                         f"got {count}"])
    written = export_tofu_folder(generate_world(seed=seed, num_entities=entities, attributes_per_entity=attributes),
                                 out_dir, real_authors=real_authors, world_facts=world_facts)
    out.print(f"wrote {len(written)} files to {out_dir}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
