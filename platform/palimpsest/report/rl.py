"""Report section of `kind: rl`: IQM test success per agent and setting with intervals, curves, every trial."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from palimpsest.report.common import fmt, plt_module, save


def rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    table = summary.get("table") or {}
    settings = list(dict.fromkeys(env for block in table.values() for env in block))
    aggregate = summary.get("aggregate") or {}
    parts = [p for p in ("training", "held_out") if any(p in a for a in aggregate.values())]
    header = ["agent", "parameters", *settings, *(f"all {p.replace('_', '-')} (IQM)" for p in parts)]
    sizes = summary.get("agents") or {}
    rows = [[agent, _count_range(sizes.get(agent, {}).get("sizes", {})),
             *(_iqm_ci(block.get(s)) for s in settings),
             *(_iqm_ci(aggregate.get(agent, {}).get(p)) for p in parts)] for agent, block in table.items()]
    return header, rows


def _count_range(sizes: dict) -> str:
    counts = sorted({size["parameters"] for size in sizes.values()})
    return "" if not counts else f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}–{counts[-1]:,}"


def _iqm_ci(cell: dict | None) -> str:
    """An rl cell: the IQM over seeds and its 95% interval ("0.80 [0.60, 1.00]"), or the one seed's value."""
    if not cell or cell.get("iqm") is None:
        return "—"
    digits = 2 if cell.get("metric", "success") == "success" else 1
    if cell.get("interval") is None:
        return f"{cell['iqm']:.{digits}f}"
    low, high = cell["interval"]
    return f"{cell['iqm']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def draw_rl_plots(folder, summary: dict) -> list[Path]:
    """Learning curves: greedy success rate against environment steps, one panel per environment setting,
    one colour per agent (a thin line per seed, the mean over seeds bold)."""
    plt = plt_module()
    folder.plots.mkdir(exist_ok=True)
    records = [r for r in folder.read_metrics() if r.get("metric") == "success_rate"]
    envs = list(dict.fromkeys(r["env"] for r in records))
    if not envs:
        return []
    agents = list(dict.fromkeys(r["agent"] for r in records))
    colours = {agent: f"C{i % 10}" for i, agent in enumerate(agents)}
    fig, axes = plt.subplots(1, len(envs), figsize=(4.5 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for agent in agents:
            runs = defaultdict(list)
            for r in records:
                if r["env"] == env and r["agent"] == agent:
                    runs[r["seed"]].append((r["step"], r["value"]))
            for points in runs.values():
                ax.plot(*zip(*sorted(points)), color=colours[agent], alpha=0.3, linewidth=0.8)
            if runs:  # the mean at each evaluation index (seeds share the iteration schedule)
                length = min(len(p) for p in runs.values())
                series = [sorted(p)[:length] for p in runs.values()]
                steps = [sum(s[i][0] for s in series) / len(series) for i in range(length)]
                means = [sum(s[i][1] for s in series) / len(series) for i in range(length)]
                ax.plot(steps, means, color=colours[agent], linewidth=2, label=agent)
        ax.set_title(env, fontsize=9)
        ax.set_xlabel("environment steps")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("greedy success rate")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return [save(fig, folder.plots / "success_curves.png")]


def rl_notes(summary: dict) -> list[str]:
    """What an rl report's table means, retention against rewriting, and every trial."""
    table = summary.get("table") or {}
    lines = ["", "Each cell: the interquartile mean over seeds [95% stratified bootstrap interval] (rliable, Agarwal et "
             "al., 2021) of the test success rate — the module chosen by its greedy evaluations, scored on fresh "
             "test episodes of that setting (`<setting>/<held-out>`: a held-out setting it never trained or was "
             "chosen on). Envs that report no success show the test return. Agents' widths are matched to one "
             "parameter budget.", "",
             "### Retention and rewriting, and the optimistic figure", "",
             "Stage 1: share of test episodes past the first corridor (phase); later stages: of the later ones "
             "reached, the share passed (rewriting the cue). Best evaluation: the mean over seeds of each trial's "
             "best greedy evaluation (the max over evaluations on the same episodes: optimistic).", "",
             "| agent | setting | test (mean) | stage 1 | later stages | best evaluation |", "|---|---|---|---|---|---|"]
    for agent, block in table.items():
        for setting, cell in block.items():
            lines.append(f"| {agent} | {setting} | {fmt(cell.get('mean'))} | {fmt(cell.get('first_stage'))} | "
                         f"{fmt(cell.get('later_stages'))} | {fmt(cell.get('best_eval_mean'))} |")
    lines += ["", "### Trials", "", "| trial | test success | best evaluation | test return | held out | env steps | "
              "best at | wall s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['trial']} | {fmt(r['test_success_rate'])} | {fmt(r['best_eval_success_rate'])} | "
              f"{fmt(r['test_mean_return'])} | "
              + (", ".join(f"{h}: {fmt(v['success_rate'])}" for h, v in r.get("held_out", {}).items()) or "—")
              + f" | {r['env_steps']} | {r['best_env_steps']} | {fmt(r['wall_s'])} |" for r in summary["results"]]
    return lines


def plots(folder, summary: dict) -> list:
    return draw_rl_plots(folder, summary) if summary.get("results") else []


def notes(summary: dict) -> list[str]:
    return rl_notes(summary) if summary.get("results") else []
