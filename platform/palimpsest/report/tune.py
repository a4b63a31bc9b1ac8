"""Report section of a search (`palimpsest tune`): every trial, the best, the Pareto front, objective plots."""

from __future__ import annotations

from pathlib import Path

from palimpsest.report.common import as_list, fmt, plt_module, save


def rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    metrics = as_list(summary.get("metric"))
    space = list(summary.get("space") or {})
    header = ["trial", "status", "reports", *space, *metrics, "wall s"]
    best = summary.get("best_trial")
    rows = [[r["trial"] + (" (best)" if r["trial"] == best else ""), r["status"], str(r["iterations"]),
             *(fmt(r["config"].get(p)) for p in space), *(fmt(r.get(m)) for m in metrics), fmt(r.get("wall_s"))]
            for r in summary.get("rows") or []]
    return header, rows


def draw_tune_plots(folder, summary: dict) -> list[Path]:
    """A search: each objective per trial (in trial order), each objective against each searched field, and
    for several objectives the trials in objective space with the Pareto front marked."""
    plt = plt_module()
    folder.plots.mkdir(exist_ok=True)
    metrics, space = as_list(summary.get("metric")), summary.get("space") or {}
    rows = [r for r in summary.get("rows") or [] if any(isinstance(r.get(m), (int, float)) for m in metrics)]
    if not rows:
        return []
    colours = {"finished": "C0", "stopped early": "C1", "error": "C3", "unfinished": "C7"}
    written = []
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for status, colour in colours.items():
            points = [(i, r[metric]) for i, r in enumerate(rows) if r["status"] == status and r.get(metric) is not None]
            if points:
                ax.scatter(*zip(*points), color=colour, label=status, s=25)
        ax.set_xlabel("trial (in order)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("objective per trial (stopped-early trials: their last report)", fontsize=9)
    fig.tight_layout()
    written.append(save(fig, folder.plots / "objective_per_trial.png"))
    fields = list(space)
    fig, axes = plt.subplots(len(metrics), len(fields), figsize=(4 * len(fields), 3.2 * len(metrics)), squeeze=False)
    for i, metric in enumerate(metrics):
        for j, field in enumerate(fields):
            ax = axes[i][j]
            for status, colour in colours.items():
                points = [(r["config"][field], r[metric]) for r in rows if r["status"] == status
                          and r.get(metric) is not None and isinstance(r["config"].get(field), (int, float, str))]
                if points:
                    xs, ys = zip(*points)
                    ax.scatter([str(x) for x in xs] if isinstance(xs[0], str) else xs, ys, color=colour, s=25,
                               label=status)
            if "loguniform" in space[field]:
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a narrow range
            ax.set_xlabel(field)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    written.append(save(fig, folder.plots / "objective_by_field.png"))
    front = summary.get("pareto_front")
    if front and len(metrics) >= 2:
        x, y = metrics[:2]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        done = [r for r in rows if r["status"] == "finished"]
        ax.scatter([r[x] for r in done], [r[y] for r in done], color="C7", s=25, label="trials")
        ordered = sorted(front, key=lambda r: r[x])
        ax.plot([r[x] for r in ordered], [r[y] for r in ordered], "o-", color="C3", label="Pareto front")
        ax.set_xlabel(f"{x} ({as_list(summary['mode'])[0]})")
        ax.set_ylabel(f"{y} ({as_list(summary['mode'])[1]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(save(fig, folder.plots / "pareto_front.png"))
    return written


def tune_notes(summary: dict) -> list[str]:
    """A search's best trial, its Pareto front, how to rerun the best, and (private) what the selection spent."""
    privacy = summary.get("privacy")
    if summary.get("best_result") is None:
        return ["", "No trial ran: " + (privacy or {}).get("note", "nothing to report") + "."]
    best = summary["best_result"]
    lines = ["", f"Best trial {summary['best_trial']} ({summary['job_kind']} job): "
             + ", ".join(f"{m} = {fmt(best.get(m))}" for m in as_list(summary["metric"]))
             + "; " + ", ".join(f"{p} = {fmt(v)}" for p, v in summary["best_config"].items())
             + f"; its run folder: `{best.get('run_folder')}`.",
             "Statuses: " + ", ".join(f"{n} {s}" for s, n in summary["statuses"].items() if n)
             + " (stopped early: by the scheduler or the time budget; their figures are their last report).",
             "`palimpsest run best.yaml` reruns the best trial's complete job with the same seed."]
    if privacy:
        lines += ["", f"Privacy of the selected model, the selection included ({privacy['selection']}): ε "
                  f"{privacy['selected_epsilon']:.4g} at δ {privacy['delta']:.3g}; one trial alone: ε "
                  f"{max(privacy['per_model_epsilon']):.4g}. {privacy['note']}. Guarantee: {privacy['guarantee']}."
                  + (f" Release: {privacy['release']}." if privacy.get("release") else "")]
    front = summary.get("pareto_front")
    if front is not None:
        metrics = as_list(summary["metric"])
        lines += ["", f"### Pareto front ({len(front)} non-dominated trials; best_config is its best on "
                  f"{metrics[0]})", "", "| trial | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        lines += [f"| {r['trial']} | " + " | ".join(fmt(r[m]) for m in metrics) + " |" for r in front]
    return lines


def plots(folder, summary: dict) -> list:
    return draw_tune_plots(folder, summary) if summary.get("rows") else []


def notes(summary: dict) -> list[str]:
    return tune_notes(summary) if summary.get("rows") else []
