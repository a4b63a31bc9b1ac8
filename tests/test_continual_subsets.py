"""Continual methods that train a subset of the model: lora (fresh adapter per task), kappatune, fpf (k-FPF)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from palimpsest.continual.fpf import module_sensitivity, phase_steps, select_top_fraction
from palimpsest.continual.kappatune import condition_number, condition_numbers, select_by_condition
from palimpsest.continual.lora import adapter_parameter_names
from palimpsest.models import build_model
from palimpsest.train.batching import collate_qa, token_losses
from palimpsest.train.checkpoint import STATE_FILE
from palimpsest.train.config import LoopConfig
from palimpsest.train.hooks import LoopContext
from palimpsest.train.loop import run_without_ray
from palimpsest.train.sampling import reservoir_update

from synthetic import EOS, PAD, loop_config, make_method, qa_items, tiny_model_cfg


def loop_state(model, tasks, task=0) -> LoopContext:
    return LoopContext(model=model, tasks=tasks, task=task, seed=3, batch_size=8, steps_per_task=40, pad_id=PAD,
                       eos_id=EOS)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def train_steps(model, items, steps=5, lr=1e-2):
    """A few AdamW steps (with weight decay, so frozen tensors would move if they were in the optimizer)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    batch = collate_qa(items[:8], pad_id=PAD, eos_id=EOS)
    for _ in range(steps):
        losses, mask = token_losses(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        (losses.sum() / mask.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- lora

LORA = {"r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]}


def test_lora_task_updates_adapters_only_and_every_base_tensor_stays_bit_identical():
    state = loop_state(build_model(tiny_model_cfg()), [qa_items()])
    method = make_method("lora", **LORA)
    method.before_task(state)
    adapters = set(adapter_parameter_names(state.model))
    assert {n for n, p in state.model.named_parameters() if p.requires_grad} == adapters
    before = snapshot(state.model)
    train_steps(state.model, qa_items())
    after = snapshot(state.model)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in adapters)
    assert all(not torch.equal(before[n], after[n]) for n in adapters if ".lora_B." in n)


def test_lora_merge_changes_only_target_modules_by_scaled_BA():
    model = build_model(tiny_model_cfg())
    base = snapshot(model)
    state = loop_state(model, [qa_items()])
    method = make_method("lora", **LORA)
    method.before_task(state)
    train_steps(state.model, qa_items())
    peft_params = dict(state.model.named_parameters())
    method.after_task(state)

    merged = state.model
    assert type(merged).__name__ == "LlamaForCausalLM" and not hasattr(merged, "peft_config")
    after = snapshot(merged)
    assert set(after) == set(base)
    changed = {n for n in base if not torch.equal(base[n], after[n])}
    assert changed == {n for n in base if n.endswith(("q_proj.weight", "v_proj.weight"))}
    name = "model.layers.0.self_attn.q_proj.weight"
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    delta = peft_params[f"{prefix}.lora_B.default.weight"] @ peft_params[f"{prefix}.lora_A.default.weight"]
    torch.testing.assert_close(after[name], base[name] + (LORA["alpha"] / LORA["r"]) * delta.detach())
    assert all(p.requires_grad for p in merged.parameters())  # handed back trainable, as it came


def test_lora_next_task_starts_with_a_fresh_zero_adapter_on_the_merged_weights():
    state = loop_state(build_model(tiny_model_cfg()), [qa_items(), qa_items(seed=1)])
    method = make_method("lora", **LORA)
    method.before_task(state)
    train_steps(state.model, qa_items())
    method.after_task(state)
    merged = state.model
    batch = collate_qa(qa_items()[:4], pad_id=PAD, eos_id=EOS)
    with torch.no_grad():
        merged_logits = merged(input_ids=batch["input_ids"]).logits

    state.task = 1
    method.before_task(state)
    lora_b = [p for n, p in state.model.named_parameters() if ".lora_B." in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)
    with torch.no_grad():
        torch.testing.assert_close(state.model(input_ids=batch["input_ids"]).logits, merged_logits)


# --------------------------------------------------------------------------- kappatune

def matrix_with_singular_values(values, seed) -> torch.Tensor:
    """A random rotation of diag(values): κ = max / min by construction."""
    gen = torch.Generator().manual_seed(seed)
    n = len(values)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T).float()


KAPPAS = {"a": 50.0, "b": 2.0, "c": 1000.0, "d": 1.0, "e": 10.0}


def hand_built_model() -> torch.nn.Module:
    model = torch.nn.Module()
    for i, (name, kappa) in enumerate(KAPPAS.items()):
        layer = torch.nn.Linear(4, 4)
        with torch.no_grad():
            layer.weight.copy_(matrix_with_singular_values([kappa, 1.5, 1.2, 1.0] if kappa > 1.5 else [1.0] * 4, i))
        model.add_module(name, layer)
    return model


def test_kappatune_selects_exactly_the_lowest_condition_numbers_and_freezes_the_rest():
    model = hand_built_model()
    kappas = condition_numbers(model)
    assert set(kappas) == {f"{n}.weight" for n in KAPPAS}  # 1-D biases are never candidates
    for name, kappa in KAPPAS.items():
        assert kappas[f"{name}.weight"] == pytest.approx(kappa, rel=1e-4)
    assert select_by_condition(kappas, 2) == ["d.weight", "b.weight"]
    assert select_by_condition(kappas, 2, order="highest") == ["c.weight", "a.weight"]
    assert condition_number(torch.tensor([[1.0, 0.0], [0.0, 0.0]])) == math.inf

    method = make_method("kappatune", top_k=3)
    method.before_task(loop_state(model, [qa_items()]))
    assert method.selected == ["d.weight", "b.weight", "e.weight"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(method.selected)
    assert make_method("kappatune", fraction=0.4).count(5) == 2


def test_kappatune_selection_survives_a_state_dict_round_trip_and_is_not_recomputed():
    first = make_method("kappatune", top_k=2)
    first.before_task(loop_state(hand_built_model(), [qa_items()]))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)

    second = make_method("kappatune", top_k=2)
    second.load_state_dict(torch.load(buffer, weights_only=False))
    other = hand_built_model()
    with torch.no_grad():
        other.c.weight.copy_(torch.eye(4))  # now c has κ = 1: a fresh selection would pick it
    second.before_task(loop_state(other, [qa_items()], task=1))
    assert second.selected == first.selected == ["d.weight", "b.weight"]
    assert {n for n, p in other.named_parameters() if p.requires_grad} == {"d.weight", "b.weight"}


# --------------------------------------------------------------------------- fpf

def test_fpf_sensitivity_is_the_per_module_mean_squared_gradient_on_a_hand_computed_case():
    squared = {"a.weight": torch.tensor([1.0, 3.0]), "a.bias": torch.tensor([2.0]),
               "b.weight": torch.ones(2, 2), "c.weight": torch.tensor([[4.0, 0.0]])}
    scores = module_sensitivity(squared)
    assert scores == pytest.approx({"a": 2.0, "b": 1.0, "c": 2.0})
    assert select_top_fraction(scores, 0.5) == ["a", "c"]  # round(1.5) = 2; a before c on the tie
    assert select_top_fraction(scores, 0.01) == ["a"]  # at least one module


def test_fpf_reservoir_keeps_every_seen_example_with_equal_chance():
    hits = np.zeros(20)
    for trial in range(2000):
        buffer: list[int] = []
        seen = reservoir_update(buffer, 0, range(12), capacity=5, rng=np.random.default_rng(trial))
        seen = reservoir_update(buffer, seen, range(12, 20), capacity=5, rng=np.random.default_rng(10_000 + trial))
        assert seen == 20 and len(buffer) == 5 == len(set(buffer))
        hits[buffer] += 1
    np.testing.assert_allclose(hits / 2000, 5 / 20, atol=0.04)


def run_steps(method, state, steps) -> None:
    """The loop's calls for `steps` (1-based) of the current task: the batch, then after_step."""
    for step in steps:
        method.after_step(state, step, method.batch(state, step - 1))


def test_fpf_buffer_holds_the_current_tasks_samples_as_they_are_seen():
    tasks = [qa_items(seed=0), qa_items(seed=1)]  # 24 examples each; 2 tasks × 40 steps of 8
    state = loop_state(build_model(tiny_model_cfg()), tasks)
    method = make_method("fpf", k=2, buffer_size=10, fpf_steps=1)
    run_steps(method, state, [1])  # task 0 under way: its first batch is buffered right after the step
    assert method.buffer == [(0, i) for i in state.task_batch_indices(0)] and method.seen == 8
    run_steps(method, state, [2])
    first_two = {(0, i) for step in (0, 1) for i in state.task_batch_indices(step)}
    assert len(method.buffer) == 10 == len(set(method.buffer)) and set(method.buffer) <= first_two
    assert method.seen == 16 and method.phases_run == []
    run_steps(method, state, range(3, 41))
    # so the first phase (k = 2: after stream steps 40 and 80) runs in task 0, on task 0's samples
    assert method.phases_run == [40] and method.fpf_modules
    assert method.seen == 320 and {t for t, _ in method.buffer} == {0}
    state.task = 1
    run_steps(method, state, range(1, 41))  # task 1 enters as it is seen, not at its end
    assert method.phases_run == [40, 80] and method.seen == 640
    assert len(method.buffer) == 10 and {t for t, _ in method.buffer} == {0, 1}


def test_fpf_phase_changes_only_the_forgetting_prone_modules():
    tasks = [qa_items(seed=0), qa_items(seed=1)]
    state = loop_state(build_model(tiny_model_cfg()), tasks)
    method = make_method("fpf", k=8, buffer_size=16, fpf_steps=3, lr=0.5, fraction=0.2)
    assert phase_steps(state.total_steps, 8) == [10, 20, 30, 40, 50, 60, 70, 80]
    run_steps(method, state, range(1, 4))  # task 0, stream steps 1-3: buffered, no phase
    state.task = 1
    before = snapshot(state.model)
    run_steps(method, state, range(1, 10))  # stream steps 41-49: no phase
    assert method.phases_run == [] and method.fpf_modules == []
    assert all(torch.equal(before[n], p) for n, p in state.model.named_parameters())
    run_steps(method, state, [10])  # stream step 50: a phase, modules scored on the buffer now
    chosen = set(method.fpf_modules)
    assert method.phases_run == [50] and 0 < len(chosen) < len({n.rsplit(".", 1)[0] for n in before})
    for name, param in state.model.named_parameters():
        if name.rsplit(".", 1)[0] in chosen:
            assert not torch.equal(before[name], param), name
        else:
            assert torch.equal(before[name], param), name
    assert all(p.grad is None for p in state.model.parameters())  # the main optimizer's grads are untouched


# --------------------------------------------------------------------------- end to end through the loop

METHODS = {
    "lora": LORA,
    "kappatune": {"fraction": 0.25},
    # k = 8 over 2 × 40 steps: a phase every 10 stream steps, as every_k = 10 (plus task ends) used to give
    "fpf": {"buffer_size": 16, "k": 8, "fpf_steps": 2, "lr": 0.05, "fraction": 0.2},
}


def two_task_config(method: str, steps: int = 40) -> LoopConfig:
    return loop_config([qa_items(seed=0), qa_items(seed=1)], steps=steps, checkpoint_every=20,
                       method={"name": method, "params": METHODS[method]})


def checkpoint_at(root: Path, task: int, step: int) -> Path:
    for path in sorted(root.glob("checkpoint_*")):
        position = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)["position"]
        if (position["method"], position["task"], position["step"]) == (0, task, step):
            return path
    raise AssertionError(f"no checkpoint at task {task} step {step} under {root}")


@pytest.fixture(scope="module")
def two_task_runs(tmp_path_factory):
    """Per method: the uninterrupted 2-task run and one resumed from its task-1 step-20 checkpoint."""
    runs = {}
    for method in METHODS:
        root = tmp_path_factory.mktemp(method)
        config = two_task_config(method)
        full = run_without_ray(config, root / "full")["methods"][0]
        middle = checkpoint_at(root / "full", task=1, step=20)
        resumed = run_without_ray(config.with_(resume_from=str(middle)), root / "resumed")["methods"][0]
        runs[method] = {"config": config, "root": root, "full": full, "resumed": resumed}
    return runs


@pytest.mark.parametrize("method", list(METHODS))
def test_two_task_run_ends_with_one_task_end_evaluation_per_task(two_task_runs, method):
    full = two_task_runs[method]["full"]
    assert len(full["task_end"]) == 2 and full["task_end_steps"] == [40, 80]
    assert set(full["task_end"][1]) == {"task0", "task1"}
    # periodic (continual) evaluation covers seen tasks only: task 1 is not evaluated during task 0
    assert {r["split"] for r in full["records"] if r["step"] < 40 and r["split"] != "train"} == {"task0"}


@pytest.mark.parametrize("method", list(METHODS))
def test_resume_from_a_mid_task_1_checkpoint_replays_the_run_bit_identically(two_task_runs, method):
    full, resumed = two_task_runs[method]["full"], two_task_runs[method]["resumed"]
    assert resumed["records"] == full["records"]
    assert resumed["task_end"] == full["task_end"]
    final_full = torch.load(checkpoint_at(two_task_runs[method]["root"] / "full", 2, 0) / STATE_FILE,
                            weights_only=False)
    final_resumed = torch.load(checkpoint_at(two_task_runs[method]["root"] / "resumed", 2, 0) / STATE_FILE,
                               weights_only=False)
    assert all(torch.equal(final_full["model"][n], final_resumed["model"][n]) for n in final_full["model"])


def test_lora_run_exports_plain_transformers_checkpoints_mid_task_and_at_task_end(two_task_runs):
    from transformers import AutoModelForCausalLM

    run = two_task_runs["lora"]
    for task, step in [(1, 20), (2, 0)]:
        folder = checkpoint_at(run["root"] / "full", task, step)
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert type(model).__name__ == "LlamaForCausalLM"
        assert not any("lora" in n for n in model.state_dict())
    final = torch.load(checkpoint_at(run["root"] / "full", 2, 0) / STATE_FILE, weights_only=False)["model"]
    reloaded = AutoModelForCausalLM.from_pretrained(checkpoint_at(run["root"] / "full", 2, 0)).state_dict()
    assert all(torch.equal(final[n], reloaded[n]) for n in final)


def test_kappatune_run_trains_selected_tensors_and_leaves_the_rest_bit_identical(two_task_runs):
    run = two_task_runs["kappatune"]
    initial = build_model(run["config"].model).state_dict()
    final = torch.load(checkpoint_at(run["root"] / "full", 2, 0) / STATE_FILE, weights_only=False)
    selected = set(final["method"]["selected"])
    assert len(selected) == round(0.25 * len(final["method"]["kappas"]))
    for name, tensor in final["model"].items():
        if name in selected:
            assert not torch.equal(initial[name], tensor), name
        else:
            assert torch.equal(initial[name], tensor), name
