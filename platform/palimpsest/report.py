"""Plots and report.md for a run folder, drawn only from what the folder holds.

`palimpsest report RUN_DIR` calls `write_report` again at any time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from palimpsest.runtime import RunFolder, atomic_write_text

EVAL_METRICS = ("answer_accuracy", "token_accuracy", "loss")


CL_COLUMNS = (("acc", "ACC"), ("bwt", "BWT"), ("fwt", "FWT"), ("forgetting", "forgetting"),
              ("min_acc", "min-ACC"), ("wc_acc", "WC-ACC"), ("general_loss", "general loss"))


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def results_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table: one row per split (train) or per method (continual)."""
    if summary.get("kind") == "continual":
        header = ["method", *(label for _, label in CL_COLUMNS), "wall s"]
        rows = [[name, *(_fmt(block.get(key)) for key, _ in CL_COLUMNS), f"{block['cost']['wall_s']:.1f}"]
                for name, block in (summary.get("methods") or {}).items()]
        return header, rows
    header = ["split", "examples", *EVAL_METRICS]
    rows = []
    for split, metrics in (summary.get("final") or {}).items():
        rows.append([split, str(metrics.get("count", "")), *(f"{metrics[m]:.4f}" for m in EVAL_METRICS if m in metrics)])
    return header, rows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Write a figure atomically (temp file + rename) with the permissions the umask gives."""
    from palimpsest.runtime import atomic_open

    try:
        with atomic_open(path, "wb") as handle:
            fig.savefig(handle, format="png", dpi=110)
    finally:
        _plt().close(fig)
    return path


def draw_continual_plots(folder: RunFolder, summary: dict) -> list[Path]:
    """Accuracy-matrix heatmaps, continual-evaluation curves with task boundaries, a method bar chart."""
    plt = _plt()
    folder.plots.mkdir(exist_ok=True)
    tasks = summary.get("tasks", [])
    records = folder.read_metrics()
    written = []
    for method, block in (summary.get("methods") or {}).items():
        matrix = block["accuracy_matrix"]
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(tasks), 1.0 + 0.8 * len(tasks)))
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_yticks(range(len(matrix)), [f"after {t}" for t in tasks[: len(matrix)]])
        ax.set_title(f"{method}: answer accuracy")
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        written.append(_save(fig, folder.plots / f"accuracy_matrix_{method}.png"))

        fig, ax = plt.subplots(figsize=(7, 3.5))
        for name in tasks:
            points = sorted((r["step"], r["value"]) for r in records
                            if r.get("method") == method and r["split"] == name and r["metric"] == "answer_accuracy")
            if points:
                ax.plot(*zip(*points), marker=".", label=name)
        for boundary in block.get("task_end_steps", [])[:-1]:
            ax.axvline(boundary, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("optimizer step (dashed: task boundaries)")
        ax.set_ylabel("answer accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{method}: continual evaluation of seen tasks")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, folder.plots / f"continual_eval_{method}.png"))

    methods = summary.get("methods") or {}
    if len(methods) > 1:
        keys = [("acc", "ACC"), ("bwt", "BWT"), ("forgetting", "forgetting"), ("wc_acc", "WC-ACC")]
        fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(keys), 3.5))
        width = 0.8 / len(methods)
        for m, (name, block) in enumerate(methods.items()):
            values = [block.get(k) or 0.0 for k, _ in keys]
            ax.bar([i + m * width for i in range(len(keys))], values, width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], [label for _, label in keys])
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title("methods on the same stream and seed")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, folder.plots / "methods.png"))
    return written


def _series(records: list[dict]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        series[(r["split"], r["metric"])].append((r["step"], r["value"]))
    return series


def draw_plots(folder: RunFolder) -> list[Path]:
    """Train loss and each evaluation metric over steps; returns the files written."""
    plt = _plt()
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
        written.append(_save(fig, folder.plots / f"{name}.png"))
    return written


def write_report(folder: RunFolder) -> Path:
    """Redraw plots and write report.md."""
    summary = folder.read_summary()
    continual = summary.get("kind") == "continual"
    plots = draw_continual_plots(folder, summary) if continual and summary.get("methods") else draw_plots(folder)
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
        lines += ["", "## Results", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", "answer_accuracy: greedy answer equals the reference token for token (exact match); "
                  "token_accuracy and loss: teacher-forced, over answer tokens."]
    if continual:
        lines += ["ACC, BWT, FWT from the accuracy matrix R (row: after task i, column: task j; GEM definitions); "
                  "forgetting: mean drop from each task's best earlier accuracy; min-ACC / WC-ACC: worst accuracy "
                  "on earlier tasks during later training (De Lange et al., 2023). FWT's b: "
                  f"{summary.get('fwt_baseline', 'random_init')} model."]
        if summary.get("eval_sets"):
            lines += ["", "What R is measured on, per task:", ""]
            lines += [f"- {task}: {where}" for task, where in summary["eval_sets"].items()]
        notes = {block.get("min_acc_note") for block in (summary.get("methods") or {}).values()} - {None}
        lines += [f"\nmin-ACC and WC-ACC: {note}." for note in sorted(notes)]
        for method, block in (summary.get("methods") or {}).items():
            lines += ["", f"### {method}: accuracy matrix", "", "| after \\ on | " + " | ".join(summary["tasks"]) + " |",
                      "|---|" + "---|" * len(summary["tasks"])]
            lines += [f"| {summary['tasks'][i]} | " + " | ".join(f"{v:.3f}" for v in row) + " |"
                      for i, row in enumerate(block["accuracy_matrix"])]
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
