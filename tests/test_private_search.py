"""A search over a private job: objectives that read training data refused, the selection's ε composed over
every trial (stopped ones by their planned history), and Papernot & Steinke's Poisson selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from palimpsest.privacy import epsilon_spent, make_plan
from palimpsest.private_search import PLANNED, best_yaml_header, planned_block, search_privacy
from palimpsest.spec import SpecError, parse_spec
from palimpsest.spec.common import PrivacySpec


def private_search(**tune) -> dict:
    return {"kind": "train", "name": "ps", "seed": 0,
            "data": {"source": "factworld", "num_entities": 40, "attributes_per_entity": 2, "split": "retain90"},
            "training": {"steps": 20, "batch_size": 8, "lr": 3e-3},
            "privacy": {"epsilon": 4.0, "accountant": "rdp"},
            "tune": {"space": {"training.lr": {"loguniform": [1e-3, 1e-2]}}, "metric": "final.holdout.loss",
                     "mode": "min", "num_samples": 4, **tune}}


def problems(document: dict) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(document)
    return "\n".join(caught.value.problems)


@pytest.mark.parametrize("metric", ["final.train.loss", "mia.attacks.loss.auc"])
def test_objectives_that_read_the_training_data_are_refused_for_private_searches_unless_allowed(metric):
    assert "reads the training data without noise" in problems(private_search(metric=metric))
    parse_spec(private_search(metric=metric, allow_nonprivate_objective=True))
    parse_spec(private_search())  # the held-out loss reads no training example
    plain = private_search(metric=metric)
    del plain["privacy"]
    parse_spec(plain)  # not private: nothing to leak past a guarantee


def test_a_fact_world_streams_accuracies_are_training_data_but_its_general_loss_is_not():
    document = {"kind": "continual", "name": "c", "seed": 0,
                "stream": {"source": "factworld", "num_entities": 12, "attributes_per_entity": 3, "num_tasks": 2,
                           "general_samples": 8},
                "methods": ["naive"], "training": {"steps": 5, "batch_size": 4},
                "privacy": {"epsilon": 4.0},
                "tune": {"space": {"training.lr": {"loguniform": [1e-3, 1e-2]}}, "metric": "acc", "mode": "max"}}
    assert "tune.metric: acc reads the training data" in problems(document)
    document["tune"].update(metric="general_loss", mode="min")
    parse_spec(document)


def test_a_poisson_selection_needs_independent_identical_trials():
    found = problems(private_search(private_selection="poisson", scheduler="asha"))
    assert "use search random, scheduler fifo, one metric" in found
    found = problems(private_search(private_selection="poisson",
                                    space={"privacy.max_grad_norm": {"loguniform": [0.1, 10.0]}}))
    assert "tune.space: privacy.max_grad_norm" in found
    parse_spec(private_search(private_selection="poisson"))
    plain = private_search(private_selection="poisson")
    del plain["privacy"]
    assert "this job has no privacy section" in problems(plain)


def write_trial(folder: Path, name: str, summary: dict) -> dict:
    (folder / name).mkdir(parents=True)
    (folder / name / "summary.json").write_text(json.dumps(summary))
    return {"run_folder": str(folder / name)}


@pytest.mark.heavy
def test_the_selected_models_epsilon_composes_every_trial_and_a_stopped_one_counts_its_whole_plan(tmp_path):
    spec = parse_spec(private_search())
    plan = make_plan(PrivacySpec(epsilon=4.0, accountant="rdp"), task_sizes=[64], batch_size=8, steps_per_task=20)
    done_history = plan.history()
    finished = plan.summary(done_history, epsilon_spent(done_history, plan.delta, "rdp"))
    rows = [write_trial(tmp_path, "a", {"status": "ok", "privacy": finished}),
            write_trial(tmp_path, "b", {"status": "ok", "privacy": finished}),
            # stopped early by ASHA at step 5: counted with its whole planned history (an upper bound)
            write_trial(tmp_path, "c", {"status": "running", PLANNED: planned_block(plan)}),
            {"run_folder": str(tmp_path / "never-started")}]
    privacy = search_privacy(spec, rows)
    three = epsilon_spent(done_history * 3, plan.delta, "rdp")  # computed apart from the code under test
    assert privacy["selected_epsilon"] == pytest.approx(three) and privacy["trials_composed"] == 3
    assert privacy["selected_epsilon"] > 1.5 * finished["epsilon"]
    assert privacy["selection"] == "compose"
    header = best_yaml_header(privacy)
    assert header.startswith("# privacy:") and f"{three:.4g}" in header
    assert best_yaml_header(None) == ""


def test_the_poisson_selection_bound_is_theorem_6_of_papernot_and_steinke():
    """Recomputed apart from dp_accounting: Opacus's RDP curve of one run, δ̂ by Canonne-Kamath-Steinke's
    conversion at ε̂ = log(1 + 1/(λ-1)), ε' = ε + μ·δ̂ + log(μ)/(λ-1), then RDP → (ε, δ) over the orders."""
    import math

    import numpy as np
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    from palimpsest.private_search import poisson_selection_epsilon

    history, mean, delta = [(1.1, 0.05, 200)], 8.0, 1e-5
    orders = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024],
                      dtype=float)
    rdp = sum(compute_rdp(q=q, noise_multiplier=s, steps=n, orders=orders) for s, q, n in history)

    def delta_hat(eps_hat: float) -> float:  # (ε̂, δ̂)-DP from the RDP curve (Proposition 12 of 2004.00010)
        logs = [(a - 1) * (r - eps_hat + math.log1p(-1 / a)) - math.log(a) for a, r in zip(orders, rdp) if a > 1.01]
        return min(1.0, math.exp(min(logs)))

    selected_rdp = np.array([r + mean * delta_hat(math.log1p(1 / (a - 1))) + math.log(mean) / (a - 1)
                             for a, r in zip(orders, rdp)])
    expected, _ = get_privacy_spent(orders=orders, rdp=selected_rdp, delta=delta)
    one_run, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    found = poisson_selection_epsilon(history, mean=mean, delta=delta)
    assert found == pytest.approx(expected, rel=0.02)
    # the selection costs something, and less than composing the 8 trials it expects to run
    assert one_run < found < poisson_selection_epsilon(history, mean=30.0, delta=delta)
    composed, _ = get_privacy_spent(orders=orders, rdp=8 * rdp, delta=delta)
    assert found < composed


def test_the_trial_count_is_poisson_with_the_requested_mean_and_not_seeded():
    from scipy import stats

    from palimpsest.private_search import poisson_trial_count

    draws = [poisson_trial_count(6.0) for _ in range(3000)]
    assert abs(np.mean(draws) - 6.0) < 0.2 and abs(np.var(draws) - 6.0) < 0.6  # Poisson: mean = variance
    counts = np.bincount(draws, minlength=30)[:30]
    expected = stats.poisson.pmf(np.arange(30), 6.0) * len(draws)
    assert stats.chisquare(counts[:14], expected[:14] * counts[:14].sum() / expected[:14].sum()).pvalue > 1e-4
    assert len({tuple(poisson_trial_count(6.0) for _ in range(10)) for _ in range(5)}) > 1


@pytest.mark.integration
def test_a_private_search_reports_the_selected_models_epsilon_with_every_trial_composed(tmp_path, ray_session):
    """Two private trials on a real Ray: each plans its budget before training, the search composes both
    for the selected model (summary and best.yaml), and an objective on training data is refused."""
    import yaml
    from typer.testing import CliRunner

    from palimpsest.cli import app

    document = private_search(space={"training.lr": {"grid": [3e-3, 1e-2]}}, num_samples=1,
                              max_concurrent_trials=2)
    document["training"].update(steps=6, log_every=6)
    document["eval"] = {"max_examples": 16}
    job = tmp_path / "search.yaml"
    job.write_text(yaml.safe_dump(document))
    folder = tmp_path / "search"
    result = CliRunner().invoke(app, ["tune", str(job), "--out", str(folder)])
    assert result.exit_code == 0, result.output
    summary = json.loads((folder / "summary.json").read_text())
    privacy = summary["privacy"]
    trials = [json.loads((Path(r["run_folder"]) / "summary.json").read_text()) for r in summary["rows"]]
    assert all(t["status"] == "ok" and t[PLANNED]["history"] == t["privacy"]["history"] for t in trials)
    one = trials[0]["privacy"]
    both = epsilon_spent([tuple(h) for t in trials for h in t["privacy"]["history"]], one["delta"], "rdp")
    assert privacy["selection"] == "compose" and privacy["trials_composed"] == 2
    assert privacy["selected_epsilon"] == pytest.approx(both) and both > 1.2 * one["epsilon"]
    header = (folder / "best.yaml").read_text().splitlines()[2]
    assert header.startswith("# privacy: the selected model is") and f"{both:.4g}" in header
    assert "Privacy of the selected model" in (folder / "report.md").read_text()

    document["tune"]["metric"] = "final.train.loss"
    job.write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(app, ["tune", str(job), "--out", str(tmp_path / "refused")])
    assert result.exit_code == 2 and "reads the training data without noise" in result.output
    assert not (tmp_path / "refused").exists()
