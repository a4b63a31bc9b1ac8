"""Continual learning: metric definitions, the naive/joint/replay/ewc methods, DDP vs ZeRO parity."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from palimpsest.continual.ewc import ewc_penalty
from palimpsest.metrics.continual import (
    average_accuracy, backward_transfer, forgetting, forward_transfer, min_accuracy, worst_case_accuracy,
)
from palimpsest.train.batching import TokenizedQA, collate_qa, token_losses
from palimpsest.train.hooks import LoopContext, MicroBatch, StepBatch

from synthetic import make_method

# --------------------------------------------------------------------------- metrics

R = [[0.9, 0.1, 0.0],
     [0.6, 0.8, 0.2],
     [0.5, 0.7, 0.95]]


def test_gem_metrics_on_a_hand_computed_matrix():
    assert average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert backward_transfer(R) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert forward_transfer(R, [0.0, 0.05, 0.1]) == pytest.approx(((0.1 - 0.05) + (0.2 - 0.1)) / 2)
    # task 0: best earlier 0.9 -> 0.5; task 1: best earlier 0.8 -> 0.7
    assert forgetting(R) == pytest.approx((0.4 + 0.1) / 2)


def test_single_task_has_no_transfer_and_bad_shapes_are_refused():
    assert backward_transfer([[0.7]]) == 0.0 and forgetting([[0.7]]) == 0.0
    assert forward_transfer([[0.7]], [0.1]) == 0.0
    with pytest.raises(ValueError):
        average_accuracy([[0.1, 0.2]])
    with pytest.raises(ValueError):
        forward_transfer(R, [0.0, 0.0])


def test_min_acc_and_wc_acc_on_hand_computed_curves():
    curves = {0: [(50, 0.6), (100, 0.9), (150, 0.2), (200, 0.5), (300, 0.4)],
              1: [(150, 0.3), (200, 0.8), (250, 0.6), (300, 0.7)],
              2: [(250, 0.5), (300, 0.95)]}
    ends = [100, 200, 300]
    mins = min_accuracy(curves, ends)
    assert mins == {0: 0.2, 1: 0.6}  # only evaluations after the task's own end count
    assert worst_case_accuracy(0.95, list(mins.values()), 3) == pytest.approx(0.95 / 3 + (2 / 3) * 0.4)
    assert worst_case_accuracy(0.8, [], 1) == 0.8


# --------------------------------------------------------------------------- methods

def items(task: int, n: int) -> list[TokenizedQA]:
    return [TokenizedQA((1, 10 + task), (20 + task, 100 + i)) for i in range(n)]


def state_for(tasks, task=0, batch_size=8) -> LoopContext:
    return LoopContext(model=torch.nn.Linear(2, 1), tasks=tasks, task=task, seed=0, batch_size=batch_size,
                       steps_per_task=10, pad_id=0, eos_id=2)


def micro_batch(model, batch: StepBatch, *, pad_id=0, eos_id=2) -> tuple[MicroBatch, object]:
    """The whole of `batch` as one micro-batch at world size 1, built as train/step.py builds it."""
    flat = batch.flat()
    inputs = collate_qa([item for _, item in flat], pad_id=pad_id, eos_id=eos_id)
    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    losses, mask = token_losses(outputs.logits, inputs["labels"])
    micro = MicroBatch(inputs=inputs, part_of_row=[part for part, _ in flat], token_losses=losses, token_mask=mask,
                       step_batch=batch, world_size=1, accumulation=1)
    return micro, outputs


def task_of(item: TokenizedQA) -> int:
    return item.prompt[1] - 10


def test_naive_batches_hold_only_the_current_task():
    state = state_for([items(0, 10), items(1, 10)], task=1)
    batches = [make_method("naive").batch(state, s) for s in range(5)]
    assert all(list(b.parts) == ["task"] and len(b) == 8 for b in batches)
    assert {task_of(it) for b in batches for _, it in b.flat()} == {1}


def test_joint_sees_every_seen_tasks_data():
    tasks = [items(0, 6), items(1, 6), items(2, 6)]
    joint = make_method("joint")
    seen = Counter(task_of(it) for s in range(9) for _, it in joint.batch(state_for(tasks, task=2), s).flat())
    assert set(seen) == {0, 1, 2} and sum(seen.values()) == 72
    # before the last task, the last task's data is not used
    assert {task_of(it) for s in range(9) for _, it in joint.batch(state_for(tasks, task=1), s).flat()} == {0, 1}


def test_replay_ratio_form_batches_carry_old_samples_at_the_configured_ratio():
    tasks = [items(0, 40), items(1, 40)]
    replay = make_method("replay", form="ratio", buffer_size=16, replay_ratio=0.25)
    state = state_for(tasks, task=0, batch_size=16)
    first = replay.batch(state, 0)
    assert list(first.parts) == ["task"] and len(first) == 16  # empty buffer: all current
    assert all(task_of(it) == 0 for _, it in first.flat())
    replay.after_step(state, 1, first)  # the ratio form fills its buffer at task ends only
    assert replay.buffer == []
    replay.after_task(state)
    assert len(replay.buffer) == 16 and all(t == 0 for t, _ in replay.buffer)
    state.task = 1
    for step in range(5):
        batch = replay.batch(state, step)
        assert len(batch) == 16  # memory examples replace current ones: the batch size is unchanged
        assert len(batch.parts["memory"]) == 4  # round(0.25 · 16) old samples
        assert all(it in tasks[0] for it in batch.parts["memory"])
        assert len(batch.parts["task"]) == 12 and all(task_of(it) == 1 for it in batch.parts["task"])


def test_replay_reservoir_keeps_each_seen_example_with_equal_chance():
    counts = np.zeros(60)
    for seed in range(300):
        replay = make_method("replay", form="ratio", buffer_size=10)  # whole tasks enter at their ends
        tasks = [items(0, 20), items(1, 20), items(2, 20)]
        state = state_for(tasks)
        state.seed = seed
        for t in range(3):
            state.task = t
            replay.after_task(state)
        for t, i in replay.buffer:
            counts[t * 20 + i] += 1
    # each of the 60 examples should be kept in ~10/60 of the runs (50 of 300)
    assert counts.sum() == 3000
    assert abs(counts[:20].mean() - counts[40:].mean()) < 12  # no bias toward early or late tasks
    assert counts.min() > 20 and counts.max() < 85


@pytest.mark.parametrize("form", ["er", "ratio"])
def test_replay_state_round_trips(form):
    replay = make_method("replay", form=form, buffer_size=4)
    state = state_for([items(0, 10)])
    for step in range(1, 4):  # er: the buffer fills after every step
        replay.after_step(state, step, replay.batch(state, step - 1))
    replay.after_task(state)  # ratio: the buffer fills at the task's end
    assert len(replay.buffer) == 4 and replay.seen > 4
    other = make_method("replay", form=form, buffer_size=4)
    other.load_state_dict(replay.state_dict())
    assert other.buffer == replay.buffer and other.seen == replay.seen
    assert other.batch(state, 5) == replay.batch(state, 5)  # the same memory draws


def test_ewc_penalty_equals_half_lambda_fisher_weighted_squared_distance():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    fisher = {"weight": torch.tensor([[3.0, 4.0]])}
    anchor = {"weight": torch.tensor([[0.0, 1.0]])}
    # ½ · λ · (3·(1-0)² + 4·(2-1)²) with λ = 2
    assert ewc_penalty(model, fisher, anchor, lam=2.0).item() == pytest.approx(7.0)


def test_ewc_fisher_is_the_mean_squared_per_example_gradient():
    from palimpsest.continual.ewc import diagonal_fisher
    from palimpsest.models import build_model, model_config
    from palimpsest.train.batching import collate_qa, token_losses

    model = build_model(model_config({"preset": "tiny-llama"}, vocab_size=128, pad_id=0, bos_id=1, eos_id=2, seed=0))
    examples = items(0, 3)
    fisher = diagonal_fisher(model, examples, pad_id=0, eos_id=2, device="cpu")
    expected = torch.zeros_like(model.lm_head.weight)
    for it in examples:
        model.zero_grad()
        batch = collate_qa([it], pad_id=0, eos_id=2)
        losses, _ = token_losses(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        losses.sum().backward()
        expected += model.lm_head.weight.grad ** 2
    torch.testing.assert_close(fisher["lm_head.weight"], expected / 3)


def test_ewc_penalises_only_after_the_first_task_and_anchors_at_its_end():
    from palimpsest.models import build_model, model_config

    model = build_model(model_config({"preset": "tiny-llama"}, vocab_size=128, pad_id=0, bos_id=1, eos_id=2, seed=0))
    ewc = make_method("ewc", lam=10.0, fisher_samples=4)
    state = state_for([items(0, 6), items(1, 6)])
    state.model = model

    def penalty() -> torch.Tensor:
        micro, outputs = micro_batch(model, ewc.batch(state, 0))
        return ewc.loss(state, model, micro, outputs) - micro.nll()

    assert ewc.penalties == [] and penalty().item() == 0.0  # task 0: the loss is the NLL alone
    ewc.after_task(state)
    (fisher, anchor), = ewc.penalties
    assert all(torch.equal(anchor[n], p) for n, p in model.named_parameters())
    assert penalty().item() == 0.0  # at the anchor
    with torch.no_grad():
        model.lm_head.weight.add_(0.1)
    assert penalty().item() > 0.0
    assert penalty().item() == pytest.approx(ewc_penalty(model, fisher, anchor, lam=10.0).item(), rel=1e-4)


# --------------------------------------------------------------------------- backends

@pytest.mark.heavy
def test_zero1_gives_the_same_loss_curve_as_ddp(tmp_path):
    """Same seed: DDP and DeepSpeed ZeRO-1 (torch AdamW) produce the same losses (world size 1 here;
    the 2-worker comparison runs in the integration test)."""
    from synthetic import loop_config

    from palimpsest.train.loop import run_without_ray

    ddp = run_without_ray(loop_config(steps=12, log_every=1), tmp_path / "ddp")["methods"][0]
    config = loop_config(steps=12, log_every=1, backend="deepspeed", zero_stage=1, precision="fp32")
    zero = run_without_ray(config, tmp_path / "zero")["methods"][0]
    curve = [r["value"] for r in ddp["records"] if r["metric"] == "train_loss"]
    zero_curve = [r["value"] for r in zero["records"] if r["metric"] == "train_loss"]
    assert len(curve) == 12
    np.testing.assert_allclose(zero_curve, curve, rtol=1e-4)
