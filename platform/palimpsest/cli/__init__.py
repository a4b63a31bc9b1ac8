"""The `palimpsest` command: the only place that prints for the user and picks exit codes.

One module per command group: `run` (validate, run, tune, bench), `cluster` (submit, jobs,
logs, stop), `info` (report, ledger, envs, export-tofu); `signals` turns Ctrl-C and SIGTERM
into an `interrupted` run folder; `common` holds the consoles and bad-input handling.

Exit codes: 0 success, 1 a run that failed (its folder says why), 2 bad input (one
readable line per problem, no traceback, no run folder), 130 interrupted by Ctrl-C (143 by
SIGTERM): summary.json says `interrupted` and `run --resume` finishes the run.
"""

# Each module registers its commands on `app`, in this order in the help: run's first.
from palimpsest.cli import run  # noqa: F401  # isort: skip
from palimpsest.cli import cluster, info  # noqa: F401  # isort: skip
from palimpsest.cli.common import app


def main() -> None:
    app()


__all__ = ["app", "main"]
