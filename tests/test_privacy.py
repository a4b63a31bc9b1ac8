"""DP-SGD: σ calibration never overspends, Poisson batches, per-example clipping and noise as the paper says.

Abadi et al., "Deep Learning with Differential Privacy", 2016, Algorithm 1: a lot drawn with
probability q per example; each example's gradient clipped to norm C; the sum plus
N(0, σ²C²I), divided by the expected lot size.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from palimpsest.privacy import BudgetError, PrivacyPlan, calibrate, default_delta, epsilon_spent, make_plan
from palimpsest.spec.common import PrivacySpec
from palimpsest.train.batching import collate_qa, token_losses
from palimpsest.train.config import Optimisation
from palimpsest.train.hooks import LoopContext, StepBatch
from palimpsest.train.private_backend import PrivateBackend
from palimpsest.train.step import train_step

from synthetic import EOS, PAD, make_method, qa_items, tiny_model

# --------------------------------------------------------------------------- calibration


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(20, 200_000), min_size=1, max_size=3), batch=st.integers(1, 1024),
       steps=st.integers(1, 3000), epsilon=st.floats(0.2, 30), accountant=st.sampled_from(["rdp", "rdp", "prv"]))
@pytest.mark.heavy
def test_calibrated_noise_never_spends_more_than_the_target(sizes, batch, steps, epsilon, accountant):
    """Done-means 1: over data sizes, batches, steps, ε, tasks of different sizes and both accountants."""
    assume(batch <= min(sizes))
    if accountant == "prv":
        steps = min(steps, 400)  # PRV's discretisation grows with steps; the property is the same
    delta = default_delta(sum(sizes))
    rates = [batch / size for size in sizes]
    try:
        sigma = calibrate(epsilon=epsilon, delta=delta, sample_rates=rates, steps_per_task=steps, accountant=accountant)
    except BudgetError:
        return  # refused up front: never trains over budget either
    spent = epsilon_spent([(sigma, rate, steps) for rate in rates], delta, accountant)
    assert spent <= epsilon


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.heavy
def test_the_93_batch_case_stays_under_the_target(accountant):
    """docs/design.md ("Opacus"): make_private_with_epsilon spent ε 8.031 for a target of 8 with 93 batches per epoch."""
    rate = 1 / 93
    sigma = calibrate(epsilon=8.0, delta=1e-5, sample_rates=[rate], steps_per_task=93 * 5, accountant=accountant)
    assert epsilon_spent([(sigma, rate, 93 * 5)], 1e-5, accountant) <= 8.0


@pytest.mark.heavy
def test_a_plan_refuses_what_cannot_be_private_and_defaults_delta_to_a_tenth_of_one_over_n():
    spec = PrivacySpec(epsilon=8.0, accountant="rdp")
    plan = make_plan(spec, task_sizes=[60, 40], batch_size=10, steps_per_task=20)
    assert plan.delta == pytest.approx(1 / (10 * 100))
    assert plan.sample_rates == (10 / 60, 10 / 40) and plan.planned_steps == 40
    assert plan.history(25) == [(plan.noise_multiplier, 10 / 60, 20), (plan.noise_multiplier, 10 / 40, 5)]
    with pytest.raises(BudgetError, match="privacy.delta"):
        make_plan(PrivacySpec(epsilon=8.0, delta=0.01), task_sizes=[100], batch_size=10, steps_per_task=5)
    with pytest.raises(BudgetError, match="training.batch_size"):
        make_plan(spec, task_sizes=[60, 8], batch_size=10, steps_per_task=5)
    with pytest.raises(BudgetError, match="privacy.epsilon"):
        make_plan(PrivacySpec(epsilon=1e-6), task_sizes=[100], batch_size=90, steps_per_task=5000)


# --------------------------------------------------------------------------- the backend


def plan_for(*, sigma=0.0, clip=1.0, batch=4, n=8, mode="hooks") -> PrivacyPlan:
    return PrivacyPlan(epsilon=1.0, delta=1e-5, noise_multiplier=sigma, max_grad_norm=clip, accountant="rdp",
                       grad_sample_mode=mode, sample_rates=(batch / n,), expected_batch_size=batch, steps_per_task=5,
                       dataset_size=n)


class Captured(PrivateBackend):
    """The real backend, except that the step stops after clipping and noise: the gradient it would apply."""

    def step(self):
        assert self.optimizer.pre_step()
        self.applied = {n: p.grad.detach().clone() for n, p in unwrap_named(self.model)}
        self.optimizer.zero_grad(set_to_none=True)
        return torch.zeros(())


def unwrap_named(model):
    from palimpsest.models import unwrap

    return [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]


def context(model, task, batch=4) -> LoopContext:
    return LoopContext(model=model, tasks=[task], task=0, seed=0, batch_size=batch, steps_per_task=5, pad_id=PAD,
                       eos_id=EOS)


def expected_gradient(items, *, clip: float, batch: int) -> dict[str, torch.Tensor]:
    """Σ_i clip(∇ mean-token-NLL of example i alone) / expected batch, one example at a time."""
    model = tiny_model()
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for item in items:
        model.zero_grad()
        inputs = collate_qa([item], pad_id=PAD, eos_id=EOS)
        losses, mask = token_losses(model(input_ids=inputs["input_ids"]).logits, inputs["labels"])
        (losses.sum() / mask.sum()).backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        factor = min(1.0, clip / (norm.item() + 1e-6))
        for n, p in model.named_parameters():
            total[n] += p.grad * factor
    return {n: g / batch for n, g in total.items()}


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ghost"])
@pytest.mark.parametrize("clip", [0.05, 1e6])  # every example clipped / none clipped
@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_step_applies_clipped_per_example_gradients_over_the_expected_batch(mode, clip, accumulation):
    """3 examples drawn where 4 are expected: the divisor is the expected lot (Abadi et al.), not the draw;
    each example is clipped alone, its loss is its own mean token NLL; micro-batches change nothing."""
    items = qa_items(3, seed=5)
    backend = Captured(tiny_model(), Optimisation(steps=5, batch_size=4), plan_for(clip=clip, mode=mode),
                       world_size=1, device=torch.device("cpu"), noise_seed=0)
    ctx = context(backend.model, items)
    train_step(ctx, make_method("naive"), backend, StepBatch.of_task(items), accumulation=accumulation,
               window=torch.zeros(2, dtype=torch.float64))
    expected = expected_gradient(items, clip=clip, batch=4)
    for name, grad in backend.applied.items():
        torch.testing.assert_close(grad, expected[name], rtol=2e-4, atol=1e-6, msg=name)


def test_an_empty_micro_batch_adds_nothing_and_noise_has_std_sigma_c_over_the_expected_batch():
    items = qa_items(1, seed=6)
    quiet = Captured(tiny_model(), Optimisation(steps=5, batch_size=4), plan_for(clip=1e6), world_size=1,
                     device=torch.device("cpu"), noise_seed=0)
    train_step(context(quiet.model, items), make_method("naive"), quiet, StepBatch.of_task(items), accumulation=2,
               window=torch.zeros(2, dtype=torch.float64))  # the second micro-batch is empty
    expected = expected_gradient(items, clip=1e6, batch=4)
    for name, grad in quiet.applied.items():
        torch.testing.assert_close(grad, expected[name], rtol=2e-4, atol=1e-6, msg=name)

    sigma, clip, batch = 2.0, 0.5, 4
    noisy = Captured(tiny_model(), Optimisation(steps=5, batch_size=batch), plan_for(sigma=sigma, clip=clip),
                     world_size=1, device=torch.device("cpu"), noise_seed=0)
    ctx = context(noisy.model, qa_items(8))
    draws = []
    for _ in range(2):
        noisy.choose_batch(make_method("naive"), ctx, 0)  # seeds step 0's noise
        train_step(ctx, make_method("naive"), noisy, StepBatch.of_task([]), accumulation=1,
                   window=torch.zeros(2, dtype=torch.float64))  # nothing drawn: the gradient is the noise alone
        draws.append(torch.cat([g.flatten() for g in noisy.applied.values()]))
    assert torch.equal(draws[0], draws[1])  # the same (seed, task, step): the same noise, so a restart replays it
    assert draws[0].std().item() == pytest.approx(sigma * clip / batch, rel=0.02)
    assert abs(draws[0].mean().item()) < 0.01 * sigma * clip / batch


def test_poisson_batches_include_each_example_independently_with_the_sample_rate():
    n, batch = 50, 10
    backend = PrivateBackend(tiny_model(), Optimisation(steps=5, batch_size=batch), plan_for(batch=batch, n=n),
                             world_size=1, device=torch.device("cpu"), noise_seed=0)
    task = qa_items(n)
    ctx = context(backend.model, task, batch)
    index = {item: i for i, item in enumerate(task)}
    draws = [[index[it] for _, it in backend.choose_batch(make_method("naive"), ctx, step).flat()]
             for step in range(600)]
    sizes = np.array([len(d) for d in draws])
    # Binomial(50, 0.2): mean 10, std 2.83; a fixed-size sampler would have std 0.
    assert abs(sizes.mean() - batch) < 4 * 2.83 / np.sqrt(len(sizes)) and 2.2 < sizes.std() < 3.5
    assert all(len(set(d)) == len(d) for d in draws)  # no example twice in one lot
    counts = np.bincount(np.concatenate(draws), minlength=n)
    assert counts.min() > 0.2 * 600 - 4 * np.sqrt(600 * 0.16) and counts.max() < 0.2 * 600 + 4 * np.sqrt(600 * 0.16)
    again = [index[it] for _, it in backend.choose_batch(make_method("naive"), ctx, 7).flat()]
    assert again == draws[7]  # seeded by (seed, task, step): a restart draws the same lot


def test_the_accountant_continues_from_the_carried_history():
    plan = plan_for(sigma=1.0)
    first = PrivateBackend(tiny_model(), Optimisation(steps=5, batch_size=4), plan, world_size=1,
                           device=torch.device("cpu"), noise_seed=0)
    items = qa_items(8)
    ctx = context(first.model, items)
    for step in range(3):
        batch = first.choose_batch(make_method("naive"), ctx, step)
        train_step(ctx, make_method("naive"), first, batch, accumulation=1, window=torch.zeros(2, dtype=torch.float64))
    carried = first.carry_over()
    assert carried == {"privacy_history": [[1.0, 0.5, 3]]}
    second = PrivateBackend(tiny_model(), Optimisation(steps=5, batch_size=4), plan, world_size=1,
                            device=torch.device("cpu"), noise_seed=0, carried=carried)
    batch = second.choose_batch(make_method("naive"), ctx, 3)
    train_step(ctx, make_method("naive"), second, batch, accumulation=1, window=torch.zeros(2, dtype=torch.float64))
    assert second.carry_over() == {"privacy_history": [[1.0, 0.5, 4]]}
    assert second.progress()["epsilon"] == pytest.approx(epsilon_spent([(1.0, 0.5, 4)], 1e-5, "rdp"))


@pytest.mark.heavy
def test_a_private_run_resumed_mid_task_continues_the_same_epsilon_and_replays_exactly(tmp_path):
    """Two tasks × 10 steps, resumed at task 1 step 5: the accountant comes back from the checkpoint."""
    from palimpsest.train.loop import run_without_ray
    from synthetic import loop_config
    from test_methods import _checkpoint_at

    plan = make_plan(PrivacySpec(epsilon=6.0, accountant="rdp"), task_sizes=[16, 12], batch_size=4, steps_per_task=10)
    config = loop_config([qa_items(16, 0), qa_items(12, 1)], steps=10, batch_size=4, checkpoint_every=5,
                         eval_every=5, max_grad_norm=None).with_(privacy=plan)
    full = run_without_ray(config, tmp_path / "full")
    middle = _checkpoint_at(tmp_path / "full", task=1, step=5)
    resumed = run_without_ray(config.with_(resume_from=str(middle)), tmp_path / "resumed")
    (a,), (b,) = full["methods"], resumed["methods"]
    assert b["privacy"] == a["privacy"] and a["privacy"]["steps"] == 20
    assert a["privacy"]["epsilon"] == pytest.approx(epsilon_spent(plan.history(), plan.delta, "rdp"))
    assert a["privacy"]["epsilon"] <= 6.0
    assert b["records"] == a["records"] and b["task_end"] == a["task_end"]
    full_weights, resumed_weights = final_weights(tmp_path / "full"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)  # the run's own secret


def test_methods_declared_private_see_training_data_only_through_dp_sgd():
    """A private method may choose what trains (before/after a task, on weights), never read examples or gradients:
    the DP backend replaces `batch` with a Poisson draw and `loss` with the per-example NLL, and `.grad`
    inside `after_backward` is neither clipped nor noised."""
    from palimpsest.catalog import methods_of
    from palimpsest.train.hooks import TrainingMethod
    from palimpsest.train.methods import load_method_class

    private = {name: info for name, info in methods_of("continual").items() if info.private}
    assert set(private) == {"naive", "lora", "kappatune"}
    for name, info in private.items():
        implementation = load_method_class(info)
        for hook in ("batch", "loss", "after_backward", "after_step"):
            assert getattr(implementation, hook) is getattr(TrainingMethod, hook), f"{name} overrides {hook}"
    refused = [info for info in methods_of("continual").values() if not info.private]
    assert all(info.private_reason and info.private_reason != "it does not state a private form" for info in refused)


# --------------------------------------------------------------------------- secret randomness


def private_config(*, reproducible: bool, steps: int = 4):
    from synthetic import loop_config

    plan = make_plan(PrivacySpec(epsilon=6.0, accountant="rdp", reproducible=reproducible), task_sizes=[16],
                     batch_size=4, steps_per_task=steps)
    return loop_config([qa_items(16, 0)], steps=steps, batch_size=4, checkpoint_every=2, eval_every=None,
                       max_grad_norm=None).with_(privacy=plan)


def final_weights(root) -> dict:
    from palimpsest.train.checkpoint import load_checkpoint

    return load_checkpoint(str(sorted(root.glob("checkpoint_*"))[-1])).model


@pytest.mark.heavy
def test_a_private_run_draws_from_a_fresh_owner_only_secret_unless_it_opts_into_the_public_seed(tmp_path):
    """Two runs of one private job give different weights; the secret lives in the trainer state only (0600),
    the same in every checkpoint of a run; `reproducible` restores the seeded draws and says the guarantee is void."""
    import os
    import stat

    from palimpsest.privacy import GUARANTEE_NONE
    from palimpsest.train.checkpoint import STATE_FILE, load_checkpoint
    from palimpsest.train.loop import run_without_ray

    secret_runs = [run_without_ray(private_config(reproducible=False), tmp_path / name) for name in ("a", "b")]
    a, b = (final_weights(tmp_path / name) for name in ("a", "b"))
    assert any(not torch.equal(a[k], b[k]) for k in a), "two private runs drew the same noise"
    secrets_of = {name: {load_checkpoint(str(c)).secret for c in (tmp_path / name).glob("checkpoint_*")}
                  for name in ("a", "b")}
    assert all(len(found) == 1 and None not in found for found in secrets_of.values())
    assert secrets_of["a"] != secrets_of["b"] and max(secrets_of["a"]).bit_length() > 200
    for state in (tmp_path / "a").glob(f"checkpoint_*/{STATE_FILE}"):
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    block = secret_runs[0]["methods"][0]["privacy"]
    assert block["reproducible"] is False and "secret" in block["guarantee"] and block["guarantee"].startswith("(")
    assert str(max(secrets_of["a"])) not in repr(secret_runs[0])  # not in what the loop hands back

    seeded = [run_without_ray(private_config(reproducible=True), tmp_path / name) for name in ("c", "d")]
    c, d = (final_weights(tmp_path / name) for name in ("c", "d"))
    assert all(torch.equal(c[k], d[k]) for k in c)
    assert seeded[0]["methods"][0]["privacy"]["guarantee"] == GUARANTEE_NONE
    assert load_checkpoint(str(sorted((tmp_path / "c").glob("checkpoint_*"))[-1])).secret is None


@pytest.mark.heavy
def test_every_release_draws_independent_noise_and_the_public_seed_shares_it(tmp_path):
    """Two runs at two ε (sweep points, trials) and two methods of one run: the noise the optimizer added at
    step 0 is uncorrelated; with `reproducible` the same standard-normal draw is scaled by each σ (corr 1)."""
    from palimpsest.train.loop import _Run
    from palimpsest.train.session import LocalSession

    def noise(run, method: int, sigma: float) -> torch.Tensor:
        backend = Captured(tiny_model(), Optimisation(steps=5, batch_size=4), plan_for(sigma=sigma, clip=1.0),
                           world_size=1, device=torch.device("cpu"), noise_seed=run.noise_seed(method))
        ctx = context(backend.model, qa_items(8))
        backend.choose_batch(make_method("naive"), ctx, 0)
        train_step(ctx, make_method("naive"), backend, StepBatch.of_task([]), accumulation=1,
                   window=torch.zeros(2, dtype=torch.float64))  # no example: what was applied is the noise
        return torch.cat([g.flatten() for g in backend.applied.values()])

    def corr(x, y) -> float:
        return float(np.corrcoef(x.numpy(), y.numpy())[0, 1])

    for reproducible, expected in ((False, 0.0), (True, 1.0)):
        config = private_config(reproducible=reproducible)
        first, second = (_Run(config, LocalSession(tmp_path / f"{reproducible}{i}"), None) for i in range(2))
        at_two_epsilons = corr(noise(first, 0, 1.1), noise(second, 0, 3.0))
        two_methods = corr(noise(first, 0, 1.1), noise(first, 1, 1.1))
        if reproducible:  # today's seeded draws: one noise vector for every release
            assert at_two_epsilons == pytest.approx(1.0, abs=1e-6)
        else:
            assert abs(at_two_epsilons) < 0.05 and abs(two_methods) < 0.05


@pytest.mark.heavy
def test_delta_at_exactly_one_over_n_is_refused_and_just_below_is_accepted():
    n = 100
    with pytest.raises(BudgetError, match="privacy.delta"):
        make_plan(PrivacySpec(epsilon=8.0, delta=1.0 / n), task_sizes=[n], batch_size=10, steps_per_task=5)
    plan = make_plan(PrivacySpec(epsilon=8.0, delta=np.nextafter(1.0 / n, 0)), task_sizes=[n], batch_size=10,
                     steps_per_task=5)
    assert plan.delta < 1.0 / n


@pytest.mark.heavy
def test_the_summary_epsilon_is_the_accountants_real_history_not_the_plan(tmp_path):
    """A plan made for 12 steps, a loop that takes 5: the summary reports the 5 steps the accountant saw."""
    from palimpsest.train.loop import run_without_ray

    config = private_config(reproducible=False, steps=12)
    config = config.with_(optimisation=dataclasses.replace(config.optimisation, steps=5))
    (result,) = run_without_ray(config, tmp_path / "run")["methods"]
    plan = config.privacy
    sigma, rate = plan.noise_multiplier, plan.sample_rates[0]
    assert result["privacy"]["history"] == [[sigma, rate, 5]]
    assert result["privacy"]["steps"] == 5
    assert result["privacy"]["epsilon"] == pytest.approx(epsilon_spent([(sigma, rate, 5)], plan.delta, "rdp"))
    assert result["privacy"]["epsilon"] < 0.8 * epsilon_spent(plan.history(), plan.delta, "rdp")


# --------------------------------------------------------------------------- person-level privacy


@pytest.mark.heavy
def test_person_level_plans_count_people_and_refuse_examples_without_a_person():
    from palimpsest.data import QAExample
    from palimpsest.privacy import people_of

    task = [QAExample(f"q{i}", "a", entity=f"p{i % 7}") for i in range(21)]  # 7 people, 3 facts each
    groups, total = people_of([task, task[:6]])
    assert total == 7 and len(groups[0]) == 7 and groups[0][0] == [0, 7, 14] and len(groups[1]) == 6
    plan = make_plan(PrivacySpec(epsilon=8.0, accountant="rdp", unit="person"), task_sizes=[7], batch_size=2,
                     steps_per_task=5, total=7)
    assert plan.sample_rates == (2 / 7,) and plan.dataset_size == 7 and plan.delta == pytest.approx(1 / 70)
    assert plan.summary(plan.history(), 1.0)["unit"] == "person"
    with pytest.raises(BudgetError, match="in people"):
        make_plan(PrivacySpec(epsilon=8.0, unit="person"), task_sizes=[7], batch_size=8, steps_per_task=5, total=7)
    with pytest.raises(BudgetError, match="privacy.unit: person"):
        people_of([task + [QAExample("who?", "a")]])


def test_person_level_batches_poisson_sample_people_and_take_one_of_their_examples():
    """Each person joins a lot with probability q = B/P, with exactly one of their examples, drawn uniformly."""
    people, per_person, batch = 10, [1, 2, 3, 4, 5, 1, 2, 3, 4, 5], 4
    groups, start = [], 0
    for count in per_person:
        groups.append(list(range(start, start + count)))
        start += count
    task = qa_items(start)
    plan = dataclasses.replace(plan_for(batch=batch, n=people), unit="person")
    backend = PrivateBackend(tiny_model(), Optimisation(steps=5, batch_size=batch), plan, world_size=1,
                             device=torch.device("cpu"), noise_seed=11, people=[groups])
    ctx = context(backend.model, task, batch)
    index = {item: i for i, item in enumerate(task)}
    owner = {i: p for p, members in enumerate(groups) for i in members}
    draws = [[index[it] for _, it in backend.choose_batch(make_method("naive"), ctx, step).flat()]
             for step in range(800)]
    for draw in draws:  # never two examples of one person in a lot
        assert len({owner[i] for i in draw}) == len(draw)
    sizes = np.array([len(d) for d in draws])  # Binomial(10, 0.4): mean 4, std 1.55
    assert abs(sizes.mean() - batch) < 0.25 and 1.3 < sizes.std() < 1.8
    joined = np.bincount([owner[i] for d in draws for i in d], minlength=people)
    assert np.all(np.abs(joined - 0.4 * 800) < 4 * np.sqrt(800 * 0.24))  # people, not examples, are sampled
    five = np.bincount([i - groups[4][0] for d in draws for i in d if owner[i] == 4], minlength=5)
    assert five.min() > 0.5 * five.mean()  # the person with 5 facts: each of them used


def test_the_person_of_a_record_comes_from_person_field_or_a_known_key(tmp_path):
    from palimpsest.data import DataError, load_qa_file

    path = tmp_path / "facts.jsonl"
    path.write_text('{"question": "q1", "answer": "a", "author": "Ann", "user": 7}\n'
                    '{"question": "q2", "answer": "b", "author": "Bo", "user": 8}\n')
    assert [e.entity for e in load_qa_file(path)] == ["Ann", "Bo"]  # TOFU-style author field
    assert [e.entity for e in load_qa_file(path, person_key="user")] == ["7", "8"]
    with pytest.raises(DataError, match="person_field"):
        load_qa_file(path, person_key="owner")


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_spent_is_opacus_own_figure_for_each_delta_asked(accountant):
    """The cached ε is keyed on everything it depends on: the same history at two δ gives Opacus's two figures."""
    from opacus.accountants import create_accountant

    history = [(1.1, 0.01, 300), (1.3, 0.02, 100)]
    for delta in (1e-3, 1e-7):
        counter = create_accountant(mechanism=accountant)
        counter.history = list(history)
        assert epsilon_spent(history, delta, accountant) == pytest.approx(counter.get_epsilon(delta=delta), rel=1e-9)
    assert epsilon_spent(history, 1e-7, accountant) > epsilon_spent(history, 1e-3, accountant)
    assert epsilon_spent(history, 1e-3, "rdp" if accountant == "prv" else "prv") != epsilon_spent(history, 1e-3,
                                                                                                  accountant)
