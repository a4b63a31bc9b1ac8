"""What a search over a private job releases, and the ε of the model it selects.

Choosing the best of several private trials by their results is itself a computation on
the private data. Two accountings:

- `compose` (default): the selected model's ε is that of releasing every trial — their
  accountant histories concatenated and composed by Opacus's accountant (`released_privacy`).
  Trials stopped early, failed or interrupted count with their whole planned history (ε only
  grows with steps, so this bounds what they spent). Any space, scheduler and searcher.
- `poisson`: Papernot & Steinke, "Hyperparameter Tuning with Renyi Differential Privacy"
  (ICLR 2022): the number of trials K is drawn from a Poisson distribution of mean μ =
  `tune.num_samples` with secret randomness, each trial is the same (λ, ε)-RDP algorithm,
  and only the best trial's model and score are released (`poisson_selection`).

Objectives that read the training data without noise are refused for private searches
(`spec.tuning.private_search_problems`).
"""

from __future__ import annotations

import json
from pathlib import Path

from palimpsest.privacy import GUARANTEE_NONE, epsilon_spent, released_privacy

PLANNED = "privacy_planned"  # in a trial's summary while it runs: its calibrated plan and whole planned history


def planned_block(plan) -> dict:
    """A trial's privacy block before it trains: the whole planned history (what it spends if it finishes)."""
    history = plan.history()
    return plan.summary(history, epsilon_spent(history, plan.delta, plan.accountant))


def trial_block(run_folder: str | Path) -> dict | None:
    """The privacy a trial spent: its summary's block when it finished, else its planned one (an upper bound)."""
    path = Path(run_folder) / "summary.json"
    if not path.is_file():
        return None  # never started: it read nothing
    summary = json.loads(path.read_text())
    if summary.get("status") == "ok" and summary.get("privacy"):
        return summary["privacy"]
    return summary.get(PLANNED)


def search_privacy(spec, rows: list[dict]) -> dict | None:
    """The search summary's `privacy` block: what the selected model's ε is, including the selection."""
    if getattr(spec, "privacy", None) is None:
        return None
    blocks = [block for row in rows if (block := trial_block(row["run_folder"])) is not None]
    if not blocks:
        return None
    if spec.tune.private_selection == "poisson":
        return poisson_selection(spec, blocks)
    composed = released_privacy(blocks, merge_single=False)
    return {**composed, "selection": "compose", "trials_composed": len(blocks),
            "selected_epsilon": composed["released_epsilon"],
            "note": "the selected model's ε counts every trial (their histories composed): the selection read "
                    "all of them"}


def best_yaml_header(privacy: dict | None) -> str:
    """The comment line best.yaml opens with about privacy (empty for a job without privacy)."""
    if not privacy:
        return ""
    return (f"# privacy: the selected model is ({privacy['selected_epsilon']:.4g}, {privacy['delta']:.3g})-DP per "
            f"{privacy.get('unit', 'example')} including the selection ({privacy['selection']}: "
            f"{privacy['note']}); one trial alone: ε {max(privacy['per_model_epsilon']):.4g}\n")


def poisson_trial_count(mean: float) -> int:
    """K ~ Poisson(mean), drawn from OS entropy (Papernot & Steinke, 2022, Theorem 6: the count must be as
    random as the analysis assumes, so it never derives from the public seed)."""
    import secrets

    import numpy as np

    return int(np.random.default_rng(secrets.randbits(128)).poisson(mean))


def one_trial_event(history):
    """One trial's DP-SGD as a dp_accounting event: each (σ, q, steps) entry a self-composed Poisson-
    subsampled Gaussian, the entries composed."""
    from dp_accounting import dp_event

    return dp_event.ComposedDpEvent([
        dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(float(q), dp_event.GaussianDpEvent(float(s))),
                                     int(n)) for s, q, n in history])


def poisson_selection_epsilon(history, *, mean: float, delta: float) -> float:
    """ε at δ of releasing only the best of K ~ Poisson(mean) runs of the DP-SGD run `history`.

    Papernot & Steinke, "Hyperparameter Tuning with Renyi Differential Privacy" (ICLR 2022),
    Theorem 6: if one run is (λ, ε)-RDP and (ε̂, δ̂)-DP with e^ε̂ ≤ 1 + 1/(λ − 1), the best of
    K ~ Poisson(μ) runs is (λ, ε + μ·δ̂ + log(μ)/(λ − 1))-RDP. Computed by Google's
    dp_accounting (`RepeatAndSelectDpEvent` with shape ∞: its RDP accountant applies
    Theorem 6 at every order with ε̂ = log(1 + 1/(λ − 1)) and δ̂ from the run's RDP curve),
    then converted to (ε, δ) by the same accountant.
    """
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    from absl import logging as absl_logging

    accountant = rdp_privacy_accountant.RdpAccountant()
    # Its series for the lowest orders may not converge at large q: it leaves those orders out and
    # says so per order; the bound over the remaining orders still holds, so the lines are dropped.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        accountant.compose(dp_event.RepeatAndSelectDpEvent(one_trial_event(history), mean=float(mean),
                                                           shape=float("inf")))
        return float(accountant.get_epsilon(delta))
    finally:
        absl_logging.set_verbosity(verbosity)


def poisson_selection(spec, blocks: list[dict]) -> dict:
    """The search's privacy block under `private_selection: poisson` (every trial the same plan)."""
    histories = {json.dumps(block["history"]) for block in blocks}
    if len(histories) != 1:
        raise RuntimeError("private_selection poisson: the trials spent different budgets; the space changed the "
                           "privacy plan (validate refuses such spaces)")
    block, mean = blocks[0], float(spec.tune.num_samples)
    selected = poisson_selection_epsilon(block["history"], mean=mean, delta=block["delta"])
    unit = block.get("unit", "example")
    void = any(b.get("reproducible") for b in blocks)
    return {"selection": "poisson", "selected_epsilon": selected, "delta": block["delta"], "unit": unit,
            "mean_trials": mean, "per_model_epsilon": [block["epsilon"]], "accountant": "rdp (dp_accounting)",
            "guarantee": GUARANTEE_NONE if void else
            f"({selected:.4g}, {block['delta']:.3g})-DP per {unit} for the best trial's model and score only",
            "release": "best.yaml's trial: its model and its objective value. The number of trials, trials.csv "
                       "and the other trials' folders are outside the guarantee: keep them private",
            "note": f"Papernot & Steinke (2022), Theorem 6: K ~ Poisson({mean:g}) trials, only the best released"}
