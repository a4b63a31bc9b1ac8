"""What every report section shares: number formats, figures written atomically, the train curves.

A run folder's report.md is drawn only from what the folder holds (`palimpsest report RUN_DIR`
draws it again at any time); `palimpsest.report.write_report` puts the sections together.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from palimpsest.atomic import atomic_open
from palimpsest.kinds import EVAL_METRICS

ANSWER_NOTE = ("answer_accuracy: greedy answer equals the reference token for token (exact match); token_accuracy and "
               "loss: teacher-forced, over answer tokens.")


def fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def plt_module():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write a figure atomically (temp file + rename) with the permissions the umask gives."""
    try:
        with atomic_open(path, "wb") as handle:
            fig.savefig(handle, format="png", dpi=110)
    finally:
        plt_module().close(fig)
    return path


def _series(records: list[dict]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        series[(r["split"], r["metric"])].append((r["step"], r["value"]))
    return series


def draw_plots(folder) -> list[Path]:
    """Train loss and each evaluation metric over steps; returns the files written."""
    plt = plt_module()
    series = _series(folder.read_metrics())
    folder.plots.mkdir(exist_ok=True)
    written = []
    panels = [("train_loss", [k for k in series if k[1] == "train_loss"], "training loss (answer tokens)")]
    panels += [(m, [k for k in series if k[1] == m], m.replace("_", " ")) for m in EVAL_METRICS]
    panels += [("epsilon", [k for k in series if k[1] == "epsilon"], "ε spent (privacy accountant)")]
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
        written.append(save(fig, folder.plots / f"{name}.png"))
    return written
