"""Plots and report.md for a run folder, drawn only from what the folder holds.

`palimpsest report RUN_DIR` calls `write_report` again at any time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from palimpsest.privacy import GUARANTEE_NONE
from palimpsest.runtime import RunFolder, atomic_write_text

EVAL_METRICS = ("answer_accuracy", "token_accuracy", "loss")


CL_COLUMNS = (("acc", "ACC"), ("bwt", "BWT"), ("fwt", "FWT"), ("forgetting", "forgetting"),
              ("min_acc", "min-ACC"), ("wc_acc", "WC-ACC"), ("general_loss", "general loss"))


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _fmt_ci(block: dict, key: str) -> str:
    """A metric of an unlearn block: its value, and its interval over seeds when it has one ("0.41 [0.33, 0.48]")."""
    from palimpsest.metrics.seeds import leaf

    value, ci = leaf(block, key), (block.get("intervals") or {}).get(key)
    if ci is None or value is None:
        return _fmt(value)
    digits = 4 if abs(value) <= 1 else 2
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _bench_value(value) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def draw_bench_plot(folder: RunFolder, summary: dict) -> list[Path]:
    """plots/bench.png: every ratio, one panel per section, the targets marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary.get("rows") or [] if r["ratio"] is not None]
    if not rows:
        return []
    sections = list(dict.fromkeys(r["section"] for r in rows))
    heights = [max(1.2, 0.35 * sum(r["section"] == s for r in rows) + 0.6) for s in sections]
    fig, axes = plt.subplots(len(sections), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, section in zip(axes[:, 0], sections):
        mine = [r for r in rows if r["section"] == section]
        colours = ["tab:red" if r["meets"] is False else "tab:green" if r["meets"] else "tab:blue" for r in mine]
        ax.barh([f"{r['case']} / {r['baseline']}" for r in mine], [r["ratio"] for r in mine], color=colours)
        ax.axvline(1.0, color="black", linewidth=0.8)
        for r in mine:
            if r["target"] and r["target"].split()[0] in (">=", "<=") and len(r["target"].split()) == 2:
                ax.axvline(float(r["target"].split()[1]), color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"{section} (ratio to the baseline; {mine[0]['unit']})", fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()
    fig.tight_layout()
    folder.plots.mkdir(exist_ok=True)
    path = folder.plots / "bench.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def results_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table: one row per split (train) or per method (continual)."""
    if summary.get("kind") == "continual":
        header = ["method", *(label for _, label in CL_COLUMNS), "wall s"]
        rows = [[name, *(_fmt(block.get(key)) for key, _ in CL_COLUMNS), f"{block['cost']['wall_s']:.1f}"]
                for name, block in (summary.get("methods") or {}).items()]
        return header, rows
    if summary.get("kind") == "unlearn":
        header = ["method", "forget quality", "model utility", "forget ROUGE-L", "forget truth ratio",
                  "MIA AUC (min-k)", "privleak %", "cost ratio (wall)", "cost ratio (FLOPs)"]
        blocks = [("target (untouched)", summary.get("target") or {}),
                  ("DP base (untouched)", summary.get("dp_base") or {})] + list((summary.get("methods") or {}).items())
        keys = ("forget_quality", "model_utility", "forget_rouge", "forget_truth_ratio", "mia.min_k", "privleak",
                "cost.ratio", "cost.flops_ratio")
        rows = [[name, *(_fmt_ci(b, key) for key in keys)] for name, b in blocks if b]
        return header, rows
    if summary.get("kind") == "rl":
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
    if summary.get("kind") == "tune":
        metrics = _as_list(summary.get("metric"))
        space = list(summary.get("space") or {})
        header = ["trial", "status", "reports", *space, *metrics, "wall s"]
        best = summary.get("best_trial")
        rows = [[r["trial"] + (" (best)" if r["trial"] == best else ""), r["status"], str(r["iterations"]),
                 *(_fmt(r["config"].get(p)) for p in space), *(_fmt(r.get(m)) for m in metrics), _fmt(r.get("wall_s"))]
                for r in summary.get("rows") or []]
        return header, rows
    if summary.get("kind") == "bench":
        header = ["section", "case", "value", "unit", "against", "ratio", "target", "met", "note"]
        rows = [[r["section"], r["case"], _bench_value(r["value"]), r["unit"], r["baseline"] or "",
                 "—" if r["ratio"] is None else f"{r['ratio']:.3f}", r["target"] or "",
                 {True: "yes", False: "NO", None: ""}[r["meets"]], r["note"]] for r in summary.get("rows") or []]
        return header, rows
    if summary.get("kind") == "privacy_sweep":
        points = summary.get("points") or []
        splits = list(points[0]["answer_accuracy"]) if points else []
        header = ["ε target", "ε spent", "σ", "lr", "loss-MIA AUC", *(f"{s} accuracy" for s in splits), "s/step"]
        rows = [[_fmt(p["epsilon_target"]) if p["epsilon_target"] is not None else "not private", _fmt(p["epsilon"]),
                 _fmt(p["noise_multiplier"]), _fmt(p.get("lr")), _fmt(p["mia_auc"].get("loss")),
                 *(_fmt(p["answer_accuracy"].get(s)) for s in splits), _fmt(p["step_s"])] for p in points]
        return header, rows
    header = ["split", "examples", *EVAL_METRICS]
    rows = []
    for split, metrics in (summary.get("final") or {}).items():
        rows.append([split, str(metrics.get("count", "")), *(f"{metrics[m]:.4f}" for m in EVAL_METRICS if m in metrics)])
    return header, rows


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def draw_tune_plots(folder: RunFolder, summary: dict) -> list[Path]:
    """A search: each objective per trial (in trial order), each objective against each searched field, and
    for several objectives the trials in objective space with the Pareto front marked."""
    plt = _plt()
    folder.plots.mkdir(exist_ok=True)
    metrics, space = _as_list(summary.get("metric")), summary.get("space") or {}
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
    written.append(_save(fig, folder.plots / "objective_per_trial.png"))
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
    written.append(_save(fig, folder.plots / "objective_by_field.png"))
    front = summary.get("pareto_front")
    if front and len(metrics) >= 2:
        x, y = metrics[:2]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        done = [r for r in rows if r["status"] == "finished"]
        ax.scatter([r[x] for r in done], [r[y] for r in done], color="C7", s=25, label="trials")
        ordered = sorted(front, key=lambda r: r[x])
        ax.plot([r[x] for r in ordered], [r[y] for r in ordered], "o-", color="C3", label="Pareto front")
        ax.set_xlabel(f"{x} ({_as_list(summary['mode'])[0]})")
        ax.set_ylabel(f"{y} ({_as_list(summary['mode'])[1]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, folder.plots / "pareto_front.png"))
    return written


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


def draw_sweep_plot(folder: RunFolder, summary: dict) -> list[Path]:
    """Membership-inference AUC and answer accuracy against ε; the non-private point drawn at the right, as ∞."""
    points = summary.get("points") or []
    if not points:
        return []
    plt = _plt()
    private = sorted((p for p in points if p["epsilon_target"] is not None), key=lambda p: p["epsilon_target"])
    open_points = [p for p in points if p["epsilon_target"] is None]
    top = max([p["epsilon_target"] for p in private] or [1.0])
    xs = [p["epsilon_target"] for p in private] + [top * 4] * len(open_points)
    ordered = private + open_points
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels = [(axes[0], "mia_auc", "membership inference AUC (0.5: no leakage)"),
              (axes[1], "answer_accuracy", "answer accuracy (exact match)")]
    for ax, key, title in panels:
        for series in ordered[0][key]:
            if key == "answer_accuracy" and series == "holdout_rules":
                continue  # drawn below as the rules' own line
            ax.plot(xs, [p[key].get(series) for p in ordered], marker="o", label=series)
        if key == "mia_auc":
            ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
            untrained = [p.get("untrained_auc", {}).get("loss") for p in ordered]
            if all(u is not None for u in untrained):  # the attack on the model before training: the floor
                ax.plot(xs, untrained, color="grey", linestyle="--", linewidth=1, label="loss, untrained model")
        if key == "answer_accuracy" and any(p.get("rule_accuracy") is not None for p in ordered):
            ax.plot(xs, [p.get("rule_accuracy") for p in ordered], marker="s", color="black",
                    label="rules, held-out people")
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{p['epsilon_target']:g}" for p in private] + ["∞ (not private)"] * len(open_points))
        ax.minorticks_off()
        ax.set_xlabel("ε")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    folder.plots.mkdir(exist_ok=True)
    return [_save(fig, folder.plots / "privacy_sweep.png")]


def _errors(blocks: list[dict], key: str):
    """matplotlib's yerr (2 × n: below, above) of `key` from the blocks' intervals over seeds; None without."""
    from palimpsest.metrics.seeds import leaf

    if not any((b.get("intervals") or {}).get(key) for b in blocks):
        return None
    below, above = [], []
    for block in blocks:
        value, ci = leaf(block, key) or 0.0, (block.get("intervals") or {}).get(key)
        below.append(max(value - ci[0], 0.0) if ci else 0.0)
        above.append(max(ci[1] - value, 0.0) if ci else 0.0)
    return [below, above]


def _point(ax, block: dict, **style) -> None:
    """One model on the forget quality (log) × utility plane, with its intervals over seeds as error bars."""
    y = max(block["forget_quality"], 1e-300)
    xerr, yerr = _errors([block], "model_utility"), _errors([block], "forget_quality")
    if yerr:  # a log axis: keep the bar's low end above 0
        yerr = [[min(yerr[0][0], y * (1 - 1e-9))], yerr[1]]
    if xerr or yerr:
        ax.errorbar([block["model_utility"]], [y], xerr=xerr, yerr=yerr, fmt="none", ecolor="grey", elinewidth=1,
                    capsize=2, zorder=1)
    ax.scatter([block["model_utility"]], [y], zorder=2, **style)


def draw_unlearn_plots(folder: RunFolder, summary: dict) -> list[Path]:
    """TOFU's forget quality (log) against model utility; MIA AUC and cost ratio per method; metrics per request."""
    methods = summary.get("methods") or {}
    if not methods:
        return []
    plt = _plt()
    folder.plots.mkdir(exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(6, 4.2))
    target = summary.get("target") or {}
    if target:
        _point(ax, target, marker="x", color="black", s=70, label="target (untouched)")
    curves: dict[str, list[dict]] = {}
    for name, block in methods.items():
        if block.get("variant"):  # a sweep's setting: a point of its method's curve
            curves.setdefault(block["base"], []).append(block)
        else:
            _point(ax, block, s=60, label=name)
    for index, (base, blocks) in enumerate(curves.items()):
        blocks = sorted(blocks, key=lambda b: tuple(sorted(b["variant"].items())))
        colour = f"C{(index + len(methods)) % 10}"
        for block in blocks:
            _point(ax, block, s=30, color=colour)
        values = {k: "/".join(format(b["variant"][k], "g") for b in blocks) for k in blocks[0]["variant"]}
        sweep = ", ".join(f"{k} {v}" for k, v in values.items())
        ax.plot([b["model_utility"] for b in blocks], [max(b["forget_quality"], 1e-300) for b in blocks],
                color=colour, linestyle="--" if base.endswith("+gu") else "-", label=f"{base} ({sweep})")
    ax.set_yscale("log")
    ax.set_xlabel("model utility (higher is better)")
    ax.set_ylabel("forget quality, KS p-value (log; higher is better)")
    ax.set_title("forget quality against model utility (TOFU)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, folder.plots / "forget_quality_vs_utility.png"))

    names = list(methods)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    auc = [methods[n]["mia"]["min_k"] for n in names]
    axes[0].bar(names, auc, color="tab:purple", yerr=_errors([methods[n] for n in names], "mia.min_k"),
                capsize=3)
    if target:
        axes[0].axhline(target["mia"]["min_k"], color="black", linestyle="--", linewidth=1, label="target")
        axes[0].legend()
    axes[0].axhline(0.5, color="grey", linestyle=":", linewidth=1)
    axes[0].set_title("MIA AUC, min-k% (forget vs holdout; 0.5: indistinct)")
    ratios = [methods[n]["cost"]["ratio"] or 0.0 for n in names]
    axes[1].bar(names, ratios, color="tab:orange", yerr=_errors([methods[n] for n in names], "cost.ratio"), capsize=3)
    axes[1].axhline(1.0, color="grey", linestyle=":", linewidth=1)
    axes[1].set_title("cost: wall time / retraining's")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    written.append(_save(fig, folder.plots / "mia_and_cost.png"))

    ids = [r["id"] for r in summary.get("requests") or []]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title, log in ((axes[0], "forget_quality", "forget quality (log)", True),
                                (axes[1], "model_utility", "model utility", False),
                                (axes[2], "forget_rouge", "forget ROUGE-L recall", False)):
        for name, block in methods.items():
            ax.plot(range(1, len(block["requests"]) + 1), [max(r[key], 1e-300) if log else r[key]
                                                         for r in block["requests"]], marker="o", label=name)
        if target.get("per_request"):
            ax.plot(range(1, len(ids) + 1), [max(t[key], 1e-300) if log else t[key] for t in target["per_request"]],
                    color="black", linestyle="--", marker="x", label="target")
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(1, len(ids) + 1), ids, rotation=30)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, folder.plots / "requests.png"))
    return written


def draw_rl_plots(folder: RunFolder, summary: dict) -> list[Path]:
    """Learning curves: greedy success rate against environment steps, one panel per environment setting,
    one colour per agent (a thin line per seed, the mean over seeds bold)."""
    plt = _plt()
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
    return [_save(fig, folder.plots / "success_curves.png")]


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
        written.append(_save(fig, folder.plots / f"{name}.png"))
    return written


def unlearn_notes(summary: dict) -> list[str]:
    """What an unlearn report's table means, and each request as served."""
    lines = ["", "Forget quality: KS-test p-value between the forget-set truth ratios of the model and of the retain "
             "model of that point (TOFU); model utility: " + (summary.get("utility") or "see README") + "; "
             "MIA AUC: forget (members) vs holdout (non-members), larger "
             "leaks more; privleak = 100·((1 − AUC) − (1 − AUC_retain))/(1 − AUC_retain) (MUSE as open-unlearning, "
             "min-k% k = 0.4: a memorised model ≈ −100, 0 ideal, positive over-unlearned); cost ratio: the requests' "
             "training against a retraining timed in this job (wall time) and against the retain models' FLOPs "
             "(every model call counted).", ""]
    lines += [f"- {split}: {what}" for split, what in (summary.get("eval_sets") or {}).items()]
    lines += [f"- **warning**: {warning}" for warning in summary.get("warnings") or []]
    if summary.get("seeds"):
        lines += [f"- seeds {', '.join(map(str, summary['seeds']))}: every number is the {summary['intervals_are']}; "
                  "each seed's own run folder (spec, ledger, report): " + ", ".join(
                      f"`{Path(f).name}`" for f in summary.get("seed_folders") or [])]
        if "retrain" in summary["methods"]:
            lines += ["- retrain trains with another seed than the retain model (`seed_offset`): its forget quality "
                      "is the noise floor of the metric, what a second retraining scores"]
    else:
        lines += [f"- ledger: `{summary.get('ledger')}`" + (f" (skipped, already done: {', '.join(summary['skipped'])})"
                                                            if summary.get("skipped") else "")]
    base = summary.get("pretrained_base")
    if base:
        knew = ", ".join(f"{k} {v:.3f}" for k, v in (base.get("utility_parts") or {}).items())
        lines += [f"- base pre-trained on {base['examples']} public facts (real authors, world facts) in "
                  f"{base['cost']['wall_s']:.1f} s, {base['cost']['train_flops']:.3g} FLOPs: paid once, in no "
                  f"method's or retraining's cost; the target, the retain models and retrain start from it"
                  + (f" (it scored {knew})" if knew else "")]
    target = summary.get("target") or {}
    if target.get("privacy"):
        p = target["privacy"]
        lines += [f"- target trained with ({p['epsilon']:.4g}, {p['delta']:.3g})-DP (DP-SGD)"]
    if (summary.get("dp_base") or {}).get("privacy"):
        p = summary["dp_base"]["privacy"]
        lines += [f"- DP base trained with ({p['epsilon']:.4g}, {p['delta']:.3g})-DP (DP-SGD) on all the data; the "
                  f"deployed target is {target.get('made', 'made from it')}; dp2u fine-tunes the DP base on what "
                  "remains, every other method unlearns the deployed target (DP2Unlearning's setup)"]
    for name, block in summary["methods"].items():
        lines += ["", f"### {name}: per request" + (" (means over seeds)" if summary.get("seeds") else ""), "", "| request | forget quality | model utility | forget ROUGE-L | "
                  "MIA AUC (min-k) | wall s | FLOPs ratio | status |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['id']} | {_fmt(r['forget_quality'])} | {_fmt(r['model_utility'])} | {_fmt(r['forget_rouge'])} "
                  f"| {_fmt(r['mia']['min_k'])} | {_fmt(r['cost']['unlearn_wall_s'])} "
                  f"| {_fmt(r['cost'].get('flops_ratio'))} | {r.get('status', '')} |" for r in block["requests"]]
    return lines


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
            lines.append(f"| {agent} | {setting} | {_fmt(cell.get('mean'))} | {_fmt(cell.get('first_stage'))} | "
                         f"{_fmt(cell.get('later_stages'))} | {_fmt(cell.get('best_eval_mean'))} |")
    lines += ["", "### Trials", "", "| trial | test success | best evaluation | test return | held out | env steps | "
              "best at | wall s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['trial']} | {_fmt(r['test_success_rate'])} | {_fmt(r['best_eval_success_rate'])} | "
              f"{_fmt(r['test_mean_return'])} | "
              + (", ".join(f"{h}: {_fmt(v['success_rate'])}" for h, v in r.get("held_out", {}).items()) or "—")
              + f" | {r['env_steps']} | {r['best_env_steps']} | {_fmt(r['wall_s'])} |" for r in summary["results"]]
    return lines


def tune_notes(summary: dict) -> list[str]:
    """A search's best trial, its Pareto front, how to rerun the best, and (private) what the selection spent."""
    privacy = summary.get("privacy")
    if summary.get("best_result") is None:
        return ["", "No trial ran: " + (privacy or {}).get("note", "nothing to report") + "."]
    best = summary["best_result"]
    lines = ["", f"Best trial {summary['best_trial']} ({summary['job_kind']} job): "
             + ", ".join(f"{m} = {_fmt(best.get(m))}" for m in _as_list(summary["metric"]))
             + "; " + ", ".join(f"{p} = {_fmt(v)}" for p, v in summary["best_config"].items())
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
        metrics = _as_list(summary["metric"])
        lines += ["", f"### Pareto front ({len(front)} non-dominated trials; best_config is its best on "
                  f"{metrics[0]})", "", "| trial | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        lines += [f"| {r['trial']} | " + " | ".join(_fmt(r[m]) for m in metrics) + " |" for r in front]
    return lines


def _any_dict(node, test) -> bool:
    """Whether any dict nested in a summary satisfies `test` (privacy blocks sit at several depths)."""
    if isinstance(node, dict):
        return test(node) or any(_any_dict(v, test) for v in node.values())
    if isinstance(node, list):
        return any(_any_dict(v, test) for v in node)
    return False


def _secret_noise(summary: dict) -> bool:
    """Whether any privacy block in a summary drew its noise from a per-run secret."""
    return _any_dict(summary, lambda block: block.get("reproducible") is False)


def _guarantee_void(summary: dict) -> bool:
    """Whether any privacy block in a summary drew its noise from the public seed."""
    return _any_dict(summary, lambda block: block.get("guarantee") == GUARANTEE_NONE)


def write_report(folder: RunFolder) -> Path:
    """Redraw plots and write report.md."""
    summary = folder.read_summary()
    continual = summary.get("kind") == "continual"
    if summary.get("kind") == "tune":
        plots = draw_tune_plots(folder, summary) if summary.get("rows") else []
    elif summary.get("kind") == "privacy_sweep":
        plots = draw_sweep_plot(folder, summary)
    elif summary.get("kind") == "unlearn":
        plots = draw_unlearn_plots(folder, summary)
    elif summary.get("kind") == "rl":
        plots = draw_rl_plots(folder, summary) if summary.get("results") else []
    elif summary.get("kind") == "bench":
        plots = draw_bench_plot(folder, summary)
    elif continual and summary.get("methods"):
        plots = draw_continual_plots(folder, summary)
    else:
        plots = draw_plots(folder)
        if summary.get("mia") and (folder.plots / "mia.png").is_file():
            plots.append(folder.plots / "mia.png")
    lines = [f"**Privacy guarantee: {GUARANTEE_NONE}** (privacy.reproducible: true)", ""] \
        if _guarantee_void(summary) else []
    lines += [f"# {summary.get('name', folder.path.name)} ({summary.get('kind', '?')})", ""]
    lines += [f"- status: **{summary.get('status')}**", f"- seed: {summary.get('seed')}"]
    if summary.get("error"):
        lines += [f"- error: `{summary['error']}`"]
    cost = summary.get("cost") or {}
    if cost:
        parts = [f"wall time: {cost.get('wall_s')} s"]
        if cost.get("train_tokens") is not None:
            parts += [f"training tokens: {cost['train_tokens']}", f"training FLOPs (6·N·D): {cost.get('train_flops', 0):.3g}"]
        lines += ["- " + "; ".join(parts)]
    if summary.get("parameters"):
        lines += [f"- parameters: {summary['parameters']['total']:,} ({summary['parameters']['trainable']:,} trainable)"]
    privacy = summary.get("privacy") if summary.get("kind") != "tune" else None  # a search's: in tune_notes
    if privacy and "epsilon" not in privacy:  # a job of several models: what releasing them all spends
        lines += [f"- privacy, every model of this job released together: ε {privacy['released_epsilon']:.4g} "
                  f"at δ {privacy['delta']:.3g} ({privacy['models']} private models composed by the "
                  f"{privacy['accountant']} accountant; each alone: "
                  + ", ".join(f"{e:.4g}" for e in privacy["per_model_epsilon"]) + f"). Guarantee: {privacy['guarantee']}"]
    elif privacy:
        unit = "person" if privacy.get("unit") == "person" else "training example"
        lines += [f"- privacy: ({privacy['epsilon']:.4g}, {privacy['delta']:.3g})-DP per {unit} "
                  f"(target ε {privacy['epsilon_target']:g}; σ {privacy['noise_multiplier']:.4g}, clipping norm "
                  f"{privacy['max_grad_norm']:g}, sample rate {privacy['sample_rate']}, {privacy['steps']} steps, "
                  f"{privacy['accountant']} accountant, {privacy['grad_sample_mode']} per-example gradients)"]
        if privacy.get("guarantee"):
            lines += [f"- guarantee: {privacy['guarantee']}"]
    if summary.get("rule_accuracy") is not None:
        lines += [f"- rule accuracy on people never trained on: {summary['rule_accuracy']:.3f} (what was learnt of "
                  f"the population); answer accuracy on the trained people's own facts: "
                  f"{summary['answer_accuracy']:.3f} (memorisation)"]
    mia = summary.get("mia") or {}
    if mia.get("attacks"):
        aucs = ", ".join(f"{name} {a['auc']:.3f}" for name, a in mia["attacks"].items())
        lines += [f"- membership inference AUC ({mia['members']} training examples vs {mia['non_members']} "
                  f"{mia['non_member_set']} examples; 0.5 = no leakage): {aucs}"]
    header, rows = results_rows(summary)
    if rows:
        lines += ["", "## Results", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        if summary.get("kind") not in ("rl", "tune", "bench"):
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
    if summary.get("kind") == "unlearn" and summary.get("methods"):
        lines += unlearn_notes(summary)
    if summary.get("kind") == "rl" and summary.get("results"):
        lines += rl_notes(summary)
    if summary.get("kind") == "tune" and summary.get("rows"):
        lines += tune_notes(summary)
    if plots:
        lines += ["", "## Curves", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    env = folder.path / "env.json"
    if env.exists():
        info = json.loads(env.read_text())
        versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items() if v)
        command = "tune" if summary.get("kind") == "tune" else "run"
        lines += ["", "## Reproduce", "", "```", f"palimpsest {command} {folder.path / 'spec.yaml'}", "```",
                  "", f"git {info.get('git_commit')}; Python {info.get('python')}; {versions}"]
        if _secret_noise(summary):
            lines += ["", "This reruns the recipe. Its DP noise and batches come from a secret drawn at the run's "
                          "start, so the rerun's weights differ (the secret is what the guarantee rests on)."]
    path = folder.path / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
