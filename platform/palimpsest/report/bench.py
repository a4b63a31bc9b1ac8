"""Report section of `kind: bench`: every ratio against its baseline, measured side by side, and the targets."""

from __future__ import annotations

from pathlib import Path


def _bench_value(value) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    header = ["section", "case", "value", "unit", "against", "ratio", "target", "met", "note"]
    rows = [[r["section"], r["case"], _bench_value(r["value"]), r["unit"], r["baseline"] or "",
             "—" if r["ratio"] is None else f"{r['ratio']:.3f}", r["target"] or "",
             {True: "yes", False: "NO", None: ""}[r["meets"]], r["note"]] for r in summary.get("rows") or []]
    return header, rows


def plots(folder, summary: dict) -> list[Path]:
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


def notes(summary: dict) -> list[str]:
    return []
