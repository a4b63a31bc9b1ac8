"""Report section of `kind: train`: one row per evaluated split, the loss and metric curves, the MIA plot."""

from __future__ import annotations

from palimpsest.kinds import EVAL_METRICS
from palimpsest.report.common import ANSWER_NOTE, draw_plots


def rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """One row per evaluated split."""
    header = ["split", "examples", *EVAL_METRICS]
    rows = []
    for split, metrics in (summary.get("final") or {}).items():
        rows.append([split, str(metrics.get("count", "")), *(f"{metrics[m]:.4f}" for m in EVAL_METRICS if m in metrics)])
    return header, rows


def plots(folder, summary: dict) -> list:
    written = draw_plots(folder)
    if summary.get("mia") and (folder.plots / "mia.png").is_file():  # drawn by the run (metrics/mia.py)
        written.append(folder.plots / "mia.png")
    return written


def notes(summary: dict) -> list[str]:
    return ["", ANSWER_NOTE] if rows(summary)[1] else []


def after(summary: dict) -> str:
    return f" after {summary['steps']} steps" if summary.get("steps") else ""
