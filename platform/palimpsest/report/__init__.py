"""Plots and report.md for a run folder, drawn only from what the folder holds.

`palimpsest report RUN_DIR` calls `write_report` again at any time. The parts every kind
shares (status, cost, privacy, membership inference, how to reproduce) are written here;
each kind's own (its results table, plots and notes) by its section, `report/<kind>.py`,
which `palimpsest.kinds` names (a search's: `report/tune.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

from palimpsest.atomic import atomic_write_text
from palimpsest.kinds import report_section
from palimpsest.privacy import GUARANTEE_NONE


def results_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (report.md's and the CLI's) of the summary's kind."""
    return report_section(summary.get("kind")).rows(summary)


def results_after(summary: dict) -> str:
    """What the results table's title says they are after (" after 200 steps"), or ""."""
    section = report_section(summary.get("kind"))
    return section.after(summary) if hasattr(section, "after") else ""


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


def write_report(folder) -> Path:
    """Redraw plots and write report.md."""
    summary = folder.read_summary()
    section = report_section(summary.get("kind"))
    plots = section.plots(folder, summary)
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
    header, rows = section.rows(summary)
    if rows:
        lines += ["", "## Results", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += section.notes(summary)
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
