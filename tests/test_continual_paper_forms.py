"""Each method's default is its paper's form; these tests fail on the plausible wrong variant."""

from __future__ import annotations

import math

import pytest
import torch

from palimpsest.continual.ewc import EWC, ewc_penalty, fisher_sample
from palimpsest.continual.fpf import phase_steps
from palimpsest.continual.lwf import distillation_loss
from palimpsest.train.hooks import LoopContext, StepBatch
from palimpsest.train.loop import run_without_ray

from synthetic import EOS, PAD, loop_config, make_method, method_run, qa_items, tiny_model


def context(model=None, *, tasks=None, task=0, batch_size=8, steps=10) -> LoopContext:
    return LoopContext(model=model if model is not None else torch.nn.Linear(2, 1),
                       tasks=tasks or [qa_items(16, 0), qa_items(16, 1)], task=task, seed=3, batch_size=batch_size,
                       steps_per_task=steps, pad_id=PAD, eos_id=EOS)


# --------------------------------------------------------------------------- ER (Chaudhry et al., 2019)

def test_er_fills_its_reservoir_from_the_first_step_and_adds_a_memory_batch_to_the_current_one():
    replay = make_method("replay", buffer_size=6, memory_batch_size=4)
    ctx = context()
    first = replay.batch(ctx, 0)
    assert list(first.parts) == ["task"] and len(first) == 8  # empty memory: the current batch alone
    replay.after_step(ctx, 1, first)
    assert len(replay.buffer) == 6 and replay.seen == 8  # B_n streamed through the reservoir
    assert {t for t, _ in replay.buffer} == {0}  # ... and it is the current task's data (task 0)
    second = replay.batch(ctx, 1)
    assert len(second.parts["task"]) == 8 and len(second.parts["memory"]) == 4  # added, not carved out
    seen_items = {ctx.tasks[0][i] for i in ctx.task_batch_indices(0)}
    assert set(second.parts["memory"]) <= seen_items  # memory holds only examples already trained on


def test_er_reservoir_keeps_every_example_of_the_stream_with_equal_chance():
    import numpy as np

    counts = np.zeros(32)
    tasks = [qa_items(16, 0), qa_items(16, 1)]
    for seed in range(200):
        replay = make_method("replay", buffer_size=8)
        ctx = context(tasks=tasks, batch_size=4, steps=4)
        ctx.seed = seed
        for task in (0, 1):
            ctx.task = task
            for step in range(4):  # 4 steps × 4 = one epoch of each task
                replay.after_step(ctx, step + 1, replay.batch(ctx, step))
        for t, i in replay.buffer:
            counts[t * 16 + i] += 1
    assert counts.sum() == 1600
    np.testing.assert_allclose(counts / 200, 8 / 32, atol=0.12)
    assert abs(counts[:16].mean() - counts[16:].mean()) < 15  # no bias toward either task


def test_the_ratio_form_replaces_part_of_a_fixed_batch_and_fills_at_task_ends():
    replay = make_method("replay", buffer_size=16, form="ratio", replay_ratio=0.25)
    ctx = context(batch_size=16)
    replay.after_step(ctx, 1, replay.batch(ctx, 0))
    assert replay.buffer == []  # nothing enters before the task ends
    replay.after_task(ctx)
    ctx.task = 1
    batch = replay.batch(ctx, 0)
    assert len(batch) == 16 and len(batch.parts["memory"]) == 4  # round(0.25 · 16) in place of current ones


# --------------------------------------------------------------------------- k-FPF (Zhao et al., 2023)

def test_kfpf_runs_k_phases_over_the_whole_stream_regardless_of_task_boundaries(tmp_path):
    assert phase_steps(80, 4) == [20, 40, 60, 80]
    assert phase_steps(60, 4) == [15, 30, 45, 60]  # the 2nd phase falls inside task 1, not at its end
    run = method_run("fpf", k=4, buffer_size=12, fpf_steps=1, fraction=0.2)
    config = loop_config([qa_items(16, 0), qa_items(16, 1)], steps=30, methods=[run], checkpoint_every=None)
    from palimpsest.train.checkpoint import load_checkpoint

    run_without_ray(config, tmp_path / "run")
    last = load_checkpoint(str(sorted((tmp_path / "run").glob("checkpoint_*"))[-1]))
    assert last.method["phases_run"] == [15, 30, 45, 60]  # phase 1 in task 0, then every 15 stream steps
    assert len(last.method["buffer"]) == 12 and {t for t, _ in last.method["buffer"]} == {0, 1}


# --------------------------------------------------------------------------- EWC (Kirkpatrick; Schwarz)

def _ewc_after_two_tasks(mode: str, **params):
    model = tiny_model()
    ctx = context(model, tasks=[qa_items(12, 0), qa_items(12, 1)])
    ewc = EWC(lam=2.0, fisher_samples=5, mode=mode, gamma=params.get("gamma", 1.0))
    ewc.after_task(ctx)
    first_anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    ctx.task = 1
    ewc.after_task(ctx)
    return ewc, model, first_anchor


def test_ewc_separate_mode_keeps_one_penalty_per_task_each_with_its_own_anchor():
    ewc, model, first_anchor = _ewc_after_two_tasks("separate")
    assert len(ewc.penalties) == 2
    (f0, a0), (f1, a1) = ewc.penalties
    assert torch.equal(a0["lm_head.weight"], first_anchor["lm_head.weight"])
    assert torch.equal(a1["lm_head.weight"], model.lm_head.weight.detach())
    total = ewc_penalty(model, f0, a0, 2.0) + ewc_penalty(model, f1, a1, 2.0)
    assert total.item() > 0 and ewc_penalty(model, f1, a1, 2.0).item() == 0.0  # at the latest anchor


def test_ewc_online_mode_decays_and_sums_the_fishers_and_moves_the_anchor():
    separate, _, _ = _ewc_after_two_tasks("separate")
    online, model, _ = _ewc_after_two_tasks("online", gamma=0.5)
    ((fisher, anchor),) = online.penalties
    (f0, _), (f1, _) = separate.penalties
    torch.testing.assert_close(fisher["lm_head.weight"], 0.5 * f0["lm_head.weight"] + f1["lm_head.weight"])
    assert torch.equal(anchor["lm_head.weight"], model.lm_head.weight.detach())  # the anchor moved


def test_ewc_fisher_uses_a_seeded_random_sample_not_the_first_examples():
    chosen = fisher_sample(100, 8, seed=3, task=0)
    assert len(set(chosen)) == 8 and chosen != list(range(8))
    assert chosen == fisher_sample(100, 8, seed=3, task=0)  # reproducible
    assert chosen != fisher_sample(100, 8, seed=3, task=1)
    assert fisher_sample(5, 8, seed=3, task=0) == [0, 1, 2, 3, 4]  # a small task: all of it


# --------------------------------------------------------------------------- LwF (Li & Hoiem)

def test_lwf_distillation_has_no_t_squared_factor_unless_asked():
    labels = torch.tensor([[-100, 1, 0]])
    teacher = torch.tensor([[[0.0, 2 * math.log(3.0)], [1.0, 1.0], [0.0, 0.0]]])
    student = torch.zeros_like(teacher)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # position 0 at T = 2; position 1 equal
    plain = distillation_loss(student, teacher, labels, temperature=2.0)
    assert plain.item() == pytest.approx(kl / 2, rel=1e-6)
    assert distillation_loss(student, teacher, labels, 2.0, t_squared=True).item() == pytest.approx(4 * kl / 2, rel=1e-6)
    assert make_method("lwf").t_squared is False


def test_the_method_loss_hook_adds_a_penalty_once_per_optimizer_step(tmp_path):
    """With grad_accum 2, l2's penalty is counted once per step: same losses as without accumulation."""
    run = method_run("l2", alpha=5.0)
    tasks = [qa_items(16, 0), qa_items(16, 1)]
    one = run_without_ray(loop_config(tasks, steps=6, methods=[run], log_every=1), tmp_path / "one")
    two = run_without_ray(loop_config(tasks, steps=6, methods=[run], log_every=1, grad_accum=2), tmp_path / "two")
    a = [r["value"] for r in one["methods"][0]["records"] if r["metric"] == "train_loss"]
    b = [r["value"] for r in two["methods"][0]["records"] if r["metric"] == "train_loss"]
    assert a == pytest.approx(b, rel=1e-4)
    # StepBatch parts are counted separately: the memory part's tokens are its own.
    batch = StepBatch({"task": qa_items(2, 0), "memory": qa_items(3, 1)})
    assert batch.answer_tokens() == batch.answer_tokens("task") + batch.answer_tokens("memory")


@pytest.mark.parametrize("method", [{"name": "replay", "params": {"form": "ratio", "replay_ratio": 0.99}},
                                    {"name": "replay", "params": {"form": "ratio", "replay_ratio": 0.01}},
                                    {"name": "gere", "params": {"replay_ratio": 0.99}}])
def test_a_replay_share_that_rounds_to_none_or_all_of_the_batch_is_refused(method):
    from palimpsest.spec import SpecError, parse_spec

    with pytest.raises(SpecError) as caught:
        parse_spec({"kind": "continual", "stream": {"source": "factworld"}, "methods": [method],
                    "training": {"batch_size": 16}})
    assert "methods[0].params.replay_ratio" in caught.value.problems[0]
