"""Report section of `kind: continual`: ACC/BWT/FWT per method, accuracy matrices, continual-evaluation curves."""

from __future__ import annotations

from pathlib import Path

from palimpsest.report.common import ANSWER_NOTE, draw_plots, fmt, plt_module, save

CL_COLUMNS = (("acc", "ACC"), ("bwt", "BWT"), ("fwt", "FWT"), ("forgetting", "forgetting"),
              ("min_acc", "min-ACC"), ("wc_acc", "WC-ACC"), ("general_loss", "general loss"))


def rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    header = ["method", *(label for _, label in CL_COLUMNS), "wall s"]
    rows = [[name, *(fmt(block.get(key)) for key, _ in CL_COLUMNS), f"{block['cost']['wall_s']:.1f}"]
            for name, block in (summary.get("methods") or {}).items()]
    return header, rows


def draw_continual_plots(folder, summary: dict) -> list[Path]:
    """Accuracy-matrix heatmaps, continual-evaluation curves with task boundaries, a method bar chart."""
    plt = plt_module()
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
        written.append(save(fig, folder.plots / f"accuracy_matrix_{method}.png"))

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
        written.append(save(fig, folder.plots / f"continual_eval_{method}.png"))

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
        written.append(save(fig, folder.plots / "methods.png"))
    return written


def plots(folder, summary: dict) -> list:
    return draw_continual_plots(folder, summary) if summary.get("methods") else draw_plots(folder)


def notes(summary: dict) -> list[str]:
    lines = ["", ANSWER_NOTE] if rows(summary)[1] else []
    lines += ["ACC, BWT, FWT from the accuracy matrix R (row: after task i, column: task j; GEM definitions); "
              "forgetting: mean drop from each task's best earlier accuracy; min-ACC / WC-ACC: worst accuracy "
              "on earlier tasks during later training (De Lange et al., 2023). FWT's b: "
              f"{summary.get('fwt_baseline', 'random_init')} model."]
    if summary.get("eval_sets"):
        lines += ["", "What R is measured on, per task:", ""]
        lines += [f"- {task}: {where}" for task, where in summary["eval_sets"].items()]
    min_acc_notes = {block.get("min_acc_note") for block in (summary.get("methods") or {}).values()} - {None}
    lines += [f"\nmin-ACC and WC-ACC: {note}." for note in sorted(min_acc_notes)]
    for method, block in (summary.get("methods") or {}).items():
        lines += ["", f"### {method}: accuracy matrix", "", "| after \\ on | " + " | ".join(summary["tasks"]) + " |",
                  "|---|" + "---|" * len(summary["tasks"])]
        lines += [f"| {summary['tasks'][i]} | " + " | ".join(f"{v:.3f}" for v in row) + " |"
                  for i, row in enumerate(block["accuracy_matrix"])]
    return lines


def after(summary: dict) -> str:
    return f" after {summary['steps']} steps" if summary.get("steps") else ""
