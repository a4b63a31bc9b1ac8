"""`palimpsest report`, `ledger`, `envs` and `export-tofu`: reading what runs left, and what is there."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from palimpsest.cli.common import app, fail_input, out


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run folder")) -> None:
    """(Re)draw the plots and report.md of a run folder."""
    from palimpsest.report import write_report
    from palimpsest.run_folder import RunFolder

    if not (run_dir / "summary.json").is_file():
        fail_input([f"{run_dir}: not a run folder (no summary.json)"])
    path = write_report(RunFolder(run_dir))
    out.print(f"wrote {path}", highlight=False)


@app.command()
def ledger(path: Path = typer.Argument(..., help="a ledger.jsonl (a run folder's, or the one a job names)")) -> None:
    """Print a forget-request ledger: each request's latest status, method, ε and where its model is."""
    from palimpsest.unlearn.ledger import Ledger, LedgerError

    if not path.is_file():
        fail_input([f"{path}: no ledger there"])
    try:
        state = Ledger(path).state()
    except LedgerError as error:
        fail_input([str(error)])
    requests = len({request_id for _, request_id, _ in state})
    methods = len({method for method, _, _ in state})
    table = Table(title=f"{path} — {requests} request(s), {methods} method(s), {len(state)} record(s)")
    for column in ("id", "status", "method", "ε", "items", "items hash", "config", "time", "checkpoint / error"):
        table.add_column(column)
    for record in state.values():
        where = record.get("checkpoint") or record.get("error") or ""
        epsilon = "—" if record.get("epsilon") is None else f"{record['epsilon']:g}"
        config = (record.get("config_hash") or "—")[7:19]
        table.add_row(record["id"], record["status"], record["method"], epsilon, str(record.get("items", "")),
                      record["items_hash"][:19] + "…", config, record.get("time", ""), str(where))
    out.print(table)


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
            fail_input([f"{name}: 0 (none) or at least 4 (each item's 3 wrong options are other items' answers); "
                         f"got {count}"])
    written = export_tofu_folder(generate_world(seed=seed, num_entities=entities, attributes_per_entity=attributes),
                                 out_dir, real_authors=real_authors, world_facts=world_facts)
    out.print(f"wrote {len(written)} files to {out_dir}", highlight=False)
