"""Report section of `kind: privacy_sweep`: membership-inference AUC and accuracy against ε, one row per point."""

from __future__ import annotations

from pathlib import Path

from palimpsest.report.common import ANSWER_NOTE, fmt, plt_module, save


def rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    points = summary.get("points") or []
    splits = list(points[0]["answer_accuracy"]) if points else []
    header = ["ε target", "ε spent", "σ", "lr", "loss-MIA AUC", *(f"{s} accuracy" for s in splits), "s/step"]
    rows = [[fmt(p["epsilon_target"]) if p["epsilon_target"] is not None else "not private", fmt(p["epsilon"]),
             fmt(p["noise_multiplier"]), fmt(p.get("lr")), fmt(p["mia_auc"].get("loss")),
             *(fmt(p["answer_accuracy"].get(s)) for s in splits), fmt(p["step_s"])] for p in points]
    return header, rows


def plots(folder, summary: dict) -> list[Path]:
    """Membership-inference AUC and answer accuracy against ε; the non-private point drawn at the right, as ∞."""
    points = summary.get("points") or []
    if not points:
        return []
    plt = plt_module()
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
    return [save(fig, folder.plots / "privacy_sweep.png")]


def notes(summary: dict) -> list[str]:
    return ["", ANSWER_NOTE] if rows(summary)[1] else []


def after(summary: dict) -> str:
    return f" after {summary['steps']} steps" if summary.get("steps") else ""
