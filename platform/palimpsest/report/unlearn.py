"""Report section of `kind: unlearn`: TOFU's and MUSE's numbers per method, per request, against the target."""

from __future__ import annotations

from pathlib import Path

from palimpsest.report.common import ANSWER_NOTE, fmt, plt_module, save


def fmt_ci(block: dict, key: str) -> str:
    """A metric of an unlearn block: its value, and its interval over seeds when it has one ("0.41 [0.33, 0.48]")."""
    from palimpsest.metrics.seeds import leaf

    value, ci = leaf(block, key), (block.get("intervals") or {}).get(key)
    if ci is None or value is None:
        return fmt(value)
    digits = 4 if abs(value) <= 1 else 2
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    header = ["method", "forget quality", "model utility", "forget ROUGE-L", "forget truth ratio",
              "MIA AUC (min-k)", "privleak %", "cost ratio (wall)", "cost ratio (FLOPs)"]
    blocks = [("target (untouched)", summary.get("target") or {}),
              ("DP base (untouched)", summary.get("dp_base") or {})] + list((summary.get("methods") or {}).items())
    keys = ("forget_quality", "model_utility", "forget_rouge", "forget_truth_ratio", "mia.min_k", "privleak",
            "cost.ratio", "cost.flops_ratio")
    rows = [[name, *(fmt_ci(b, key) for key in keys)] for name, b in blocks if b]
    return header, rows


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


def draw_unlearn_plots(folder, summary: dict) -> list[Path]:
    """TOFU's forget quality (log) against model utility; MIA AUC and cost ratio per method; metrics per request."""
    methods = summary.get("methods") or {}
    if not methods:
        return []
    plt = plt_module()
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
    written.append(save(fig, folder.plots / "forget_quality_vs_utility.png"))

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
    written.append(save(fig, folder.plots / "mia_and_cost.png"))

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
    written.append(save(fig, folder.plots / "requests.png"))
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
        lines += [f"| {r['id']} | {fmt(r['forget_quality'])} | {fmt(r['model_utility'])} | {fmt(r['forget_rouge'])} "
                  f"| {fmt(r['mia']['min_k'])} | {fmt(r['cost']['unlearn_wall_s'])} "
                  f"| {fmt(r['cost'].get('flops_ratio'))} | {r.get('status', '')} |" for r in block["requests"]]
    return lines


plots = draw_unlearn_plots


def notes(summary: dict) -> list[str]:
    lines = ["", ANSWER_NOTE] if rows(summary)[1] else []
    return lines + (unlearn_notes(summary) if summary.get("methods") else [])


def after(summary: dict) -> str:
    return f" after {len(summary['requests'])} request(s)" if summary.get("requests") else ""
