"""The `palimpsest` command. The only module that prints for the user and picks exit codes.

Exit codes: 0 success, 2 bad input (one readable line per problem, no traceback,
no run folder), 1 a run that failed (its folder says why), 130 interrupted.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from palimpsest.spec import SpecError, dump_spec, load_spec

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Palimpsest: memory in learning systems — continual fine-tuning, unlearning, memory RL, on Ray.")
# Not a terminal (CI logs, pipes): rich would assume 80 columns and cut the results table.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class BadInput(Exception):
    """Bad input found after the spec parsed (data, resources): exit 2."""


def _fail_input(lines: list[str]) -> None:
    for line in lines:
        err.print(f"[red]error:[/red] {line}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def validate(jobs: List[Path] = typer.Argument(..., help="job spec YAML files")) -> None:
    """Check job specs; exit 0 if all are valid, 2 otherwise (every problem listed)."""
    problems = []
    for job in jobs:
        try:
            spec = load_spec(job)
        except SpecError as error:
            problems += error.problems
        else:
            out.print(f"ok: {job} (kind: {spec.kind})", highlight=False)
    if problems:
        _fail_input(problems)


@app.command()
def run(
    job: Optional[Path] = typer.Argument(None, help="job spec YAML (omit with --resume)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a field: --set training.lr=1e-3"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/<name>-<UTC time>)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)"),
    no_ray: bool = typer.Option(False, "--no-ray", help="run the training loop in this process (1 worker), without Ray"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="finish an interrupted or failed run folder from its last checkpoint"),
) -> None:
    """Run one job and write its run folder (or finish one with --resume)."""
    from palimpsest.runtime import RunFolder

    if resume is not None:
        if job is not None or set_ or out_dir:
            _fail_input(["--resume takes the run folder only: its spec.yaml is the job (no JOB, --set or --out)"])
        if not (resume / "spec.yaml").is_file() or not (resume / "summary.json").is_file():
            _fail_input([f"{resume}: not a run folder (needs spec.yaml and summary.json)"])
        if RunFolder(resume).read_summary().get("status") == "ok":
            _fail_input([f"{resume}: this run already finished (status ok)"])
        job = resume / "spec.yaml"
    elif job is None:
        _fail_input(["give a job spec (palimpsest run JOB.yaml) or --resume RUN_DIR"])
    try:
        spec = load_spec(job, set_ or [])
    except SpecError as error:
        _fail_input(error.problems)
    from palimpsest.data import DataError
    from palimpsest.runners import RUNNERS

    runner = RUNNERS[spec.kind]
    try:
        if no_ray and spec.scaling.num_workers != 1:
            raise BadInput("scaling.num_workers: --no-ray runs one worker; set scaling.num_workers=1")
        prepared = runner.prepare(spec, saved_tokenizer=(resume / "tokenizer") if resume else None)
        if not no_ray:
            _start_ray(spec, address)
        folder = RunFolder(resume.resolve()) if resume else RunFolder.create(spec.name, out_dir)
    except (DataError, BadInput, FileExistsError) as error:
        _fail_input([f"{job}: {error}"])
    if not resume:
        folder.write_spec(dump_spec(spec))
        folder.write_env()
    folder.write_summary({"status": "running", "kind": spec.kind, "name": spec.name, "seed": spec.seed,
                          "resumed": resume is not None})
    out.print(f"run folder: {folder.path}", highlight=False)
    try:
        summary = runner.run(spec, prepared, folder, use_ray=not no_ray)
    except KeyboardInterrupt:
        _finish_failed(folder, spec, "interrupted", "KeyboardInterrupt")
        err.print(f"interrupted; partial run in {folder.path}")
        raise typer.Exit(130)
    except Exception as error:  # the run failed: record why, then exit 1
        _finish_failed(folder, spec, "failed", f"{type(error).__name__}: {error}")
        err.print(traceback.format_exc(), highlight=False, markup=False)
        err.print(f"[red]run failed:[/red] {type(error).__name__}: {error}\nsee {folder.path / 'summary.json'}")
        raise typer.Exit(1)
    summary["resumed"] = resume is not None
    folder.write_summary(summary)
    from palimpsest.report import write_report

    write_report(folder)
    _print_results(summary, folder.path)


def _start_ray(spec, address: str | None) -> None:
    from palimpsest.runtime import init_ray, ray_cluster_cpus

    try:
        init_ray(address)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise BadInput(f"--address: cannot start or reach Ray ({address or 'local'}): {error}") from None
    needed = spec.scaling.num_workers * spec.scaling.cpus_per_worker
    have = ray_cluster_cpus()
    if needed > have:
        raise BadInput(f"scaling: {spec.scaling.num_workers} workers × {spec.scaling.cpus_per_worker} CPUs "
                       f"need {needed:g} CPUs but the Ray cluster has {have:g}")
    if spec.scaling.use_gpu:
        import ray

        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < spec.scaling.num_workers:
            raise BadInput(f"scaling.use_gpu: {spec.scaling.num_workers} workers need as many GPUs; the cluster has {gpus:g}")


def _finish_failed(folder, spec, status: str, message: str) -> None:
    folder.write_summary({"status": status, "kind": spec.kind, "name": spec.name, "seed": spec.seed, "error": message})
    try:
        from palimpsest.report import write_report

        write_report(folder)
    except Exception:  # the report is a courtesy here; the summary already says what happened
        pass


def _print_results(summary: dict, path: Path) -> None:
    from palimpsest.report import results_rows

    header, rows = results_rows(summary)
    table = Table(title=f"{summary['name']} — results after {summary.get('steps')} steps")
    for column in header:
        table.add_column(column, justify="left" if column == "split" else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    cost = summary.get("cost", {})
    out.print(f"wall {cost.get('wall_s')} s · {cost.get('train_tokens')} training tokens · run folder {path}",
              highlight=False)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run folder")) -> None:
    """(Re)draw the plots and report.md of a run folder."""
    from palimpsest.report import write_report
    from palimpsest.runtime import RunFolder

    if not (run_dir / "summary.json").is_file():
        _fail_input([f"{run_dir}: not a run folder (no summary.json)"])
    path = write_report(RunFolder(run_dir))
    out.print(f"wrote {path}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
