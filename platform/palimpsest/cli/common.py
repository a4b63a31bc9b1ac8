"""What every command shares: the consoles, the `app`, bad input (exit 2), loading a job.

Only the CLI prints for the user: the library reports lines through `logging` and
`palimpsest.progress`, and the commands here decide how they show.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from palimpsest.kinds import KINDS
from palimpsest.spec import SpecError, load_spec

KIND_NAMES = ", ".join(KINDS)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help=f"Palimpsest: fine-tune language models on Ray and measure what they keep and forget. "
                       f"Job kinds: {KIND_NAMES}. Exit codes: 0 done, 1 the run failed, 2 bad input, "
                       f"130 interrupted (resumable with run --resume).")
# Not a terminal (CI logs, pipes): rich would assume 80 columns and cut the results table.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class BadInput(Exception):
    """Bad input found after the spec parsed (data, resources): exit 2."""


def warn_void_guarantees(job, spec) -> None:
    """One warning line per privacy section that opted into the public seed (the guarantee is void)."""
    from palimpsest.spec.common import GUARANTEE_VOID_WARNING, void_guarantees

    for path in void_guarantees(spec):
        err.print(f"warning: {job}: {path}: {GUARANTEE_VOID_WARNING}", highlight=False, markup=False, soft_wrap=True)


def fail_input(lines: list[str]) -> None:
    for line in lines:
        err.print(f"[red]error:[/red] {escape(str(line))}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def load_job(job: Path, sets: list[str] | None, *, search: bool):
    """The job with its --set overrides (bad input: exit 2); a search needs a tune: section."""
    try:
        spec = load_spec(job, sets or [])
    except SpecError as error:
        fail_input(error.problems)
    if search and getattr(spec, "tune", None) is None:
        fail_input([f"{job}: tune: no search space in this job (add a tune: section; README, \"Hyperparameter "
                     "search\")"])
    return spec
