"""Plots and report.md for a run folder, drawn only from what the folder holds.

`palimpsest report RUN_DIR` calls `write_report` again at any time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from palimpsest.runtime import RunFolder, atomic_write_text

EVAL_METRICS = ("answer_accuracy", "token_accuracy", "loss")


def results_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (one row per evaluated split)."""
    header = ["split", "examples", *EVAL_METRICS]
    rows = []
    for split, metrics in (summary.get("final") or {}).items():
        rows.append([split, str(metrics.get("count", "")), *(f"{metrics[m]:.4f}" for m in EVAL_METRICS if m in metrics)])
    return header, rows


def _series(records: list[dict]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        series[(r["split"], r["metric"])].append((r["step"], r["value"]))
    return series


def draw_plots(folder: RunFolder) -> list[Path]:
    """Train loss and each evaluation metric over steps; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _series(folder.read_metrics())
    folder.plots.mkdir(exist_ok=True)
    written = []
    panels = [("train_loss", [k for k in series if k[1] == "train_loss"], "training loss (answer tokens)")]
    panels += [(m, [k for k in series if k[1] == m], m.replace("_", " ")) for m in EVAL_METRICS]
    for name, keys, title in panels:
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for split, metric in sorted(keys):
            steps, values = zip(*series[(split, metric)])
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=split)
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = folder.plots / f"{name}.png"
        fig.savefig(path.with_suffix(".tmp.png"), dpi=110)
        plt.close(fig)
        path.with_suffix(".tmp.png").replace(path)
        written.append(path)
    return written


def write_report(folder: RunFolder) -> Path:
    """Redraw plots and write report.md."""
    summary = folder.read_summary()
    plots = draw_plots(folder)
    lines = [f"# {summary.get('name', folder.path.name)} ({summary.get('kind', '?')})", ""]
    lines += [f"- status: **{summary.get('status')}**", f"- seed: {summary.get('seed')}"]
    if summary.get("error"):
        lines += [f"- error: `{summary['error']}`"]
    cost = summary.get("cost") or {}
    if cost:
        lines += [f"- wall time: {cost.get('wall_s')} s; training tokens: {cost.get('train_tokens')}; "
                  f"training FLOPs (6·N·D): {cost.get('train_flops', 0):.3g}"]
    if summary.get("parameters"):
        lines += [f"- parameters: {summary['parameters']['total']:,} ({summary['parameters']['trainable']:,} trainable)"]
    header, rows = results_rows(summary)
    if rows:
        lines += ["", "## Results (end of training)", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", "answer_accuracy: greedy answer equals the reference token for token (exact match); "
                  "token_accuracy and loss: teacher-forced, over answer tokens."]
    if plots:
        lines += ["", "## Curves", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    env = folder.path / "env.json"
    if env.exists():
        info = json.loads(env.read_text())
        versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items() if v)
        lines += ["", "## Reproduce", "", "```", f"palimpsest run {folder.path / 'spec.yaml'}", "```",
                  "", f"git {info.get('git_commit')}; Python {info.get('python')}; {versions}"]
    path = folder.path / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
