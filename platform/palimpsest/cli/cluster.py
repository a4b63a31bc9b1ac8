"""`palimpsest submit`, `jobs`, `logs` and `stop`: jobs on a Ray cluster through Ray Job Submission."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from palimpsest.cli.common import app, err, fail_input, load_job, out


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
            fail_input(["--resume takes the run folder only: its spec.yaml is the job (no JOB, --set or --storage)"])
        try:
            jobs, sent = resubmit(resume, address=address, search=search, token_file=token_file)
        except SubmitError as error:
            fail_input([str(error)])
    else:
        if job is None:
            fail_input(["give a job spec (palimpsest submit JOB.yaml) or --resume RUN_FOLDER"])
        spec = load_job(job, set_, search=search)
        try:
            jobs, sent = send(job, set_ or [], spec, address=address, storage=storage, search=search,
                              token_file=token_file)
        except SubmitError as error:
            fail_input([str(error)])
    where = _where(address, token_file)
    err.print(f"sent {sent.job_id}; waiting for it to start on the head (Ray sets up its environment first)",
              highlight=False, markup=False, soft_wrap=True)
    try:  # the head's Python must run us: a job that dies on `import typer` is not "submitted"
        started = await_start(jobs, sent.job_id)
    except SubmitError as error:
        fail_input([str(error)])
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
        fail_input([str(error)])
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
        fail_input([str(error)])
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
