"""The regularising continual methods: `l2` (L2-SP), `lwf` (logit distillation) and `gere` (general replay + TM loss).

Each method's maths is checked by hand on a toy, then each runs two tasks through the
shared loop and resumes bit-identically from a mid-task-1 checkpoint (its state_dict is complete).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from palimpsest.continual.gere import activation_states, activation_thresholds, threshold_margin_loss
from palimpsest.continual.l2 import l2_sp_penalty
from palimpsest.continual.lwf import distillation_loss
from palimpsest.train.batching import IGNORE_INDEX, TokenizedQA, collate_qa, token_losses
from palimpsest.train.checkpoint import STATE_FILE
from palimpsest.train.config import LoopConfig
from palimpsest.train.hooks import LoopContext, MicroBatch, StepBatch
from palimpsest.train.loop import run_without_ray

from synthetic import BOS, EOS, PAD, VOCAB, loop_config, make_method, qa_items, tiny_model


def general_items(n: int = 12, seed: int = 9) -> list[TokenizedQA]:
    """What the loop builds from general-corpus sentences: prompt = (bos,), answer = the sentence."""
    rng = np.random.default_rng(seed)
    return [TokenizedQA((BOS,), tuple(rng.integers(3, VOCAB, size=rng.integers(4, 9)).tolist())) for _ in range(n)]


def loop_state(model, *, task: int = 0, general=(), batch_size: int = 8) -> LoopContext:
    return LoopContext(model=model, tasks=[qa_items(16, 0), qa_items(16, 1)], task=task, seed=3,
                       batch_size=batch_size, steps_per_task=10, pad_id=PAD, eos_id=EOS, general=list(general))


def micro_batch(model, batch: StepBatch, *, accumulation: int = 1) -> tuple[MicroBatch, object]:
    """The whole of `batch` as one micro-batch at world size 1, built as train/step.py builds it."""
    flat = batch.flat()
    inputs = collate_qa([item for _, item in flat], pad_id=PAD, eos_id=EOS)
    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    losses, mask = token_losses(outputs.logits, inputs["labels"])
    micro = MicroBatch(inputs=inputs, part_of_row=[part for part, _ in flat], token_losses=losses, token_mask=mask,
                       step_batch=batch, world_size=1, accumulation=accumulation)
    return micro, outputs


def toy_micro(accumulation: int = 1) -> MicroBatch:
    """A one-row micro-batch with made-up token losses, for methods whose penalty ignores the outputs."""
    batch = StepBatch.of_task([TokenizedQA((BOS, 5), (6,))])
    return MicroBatch(inputs={}, part_of_row=["task"], token_losses=torch.tensor([[0.0, 0.7]]),
                      token_mask=torch.tensor([[False, True]]), step_batch=batch, world_size=1,
                      accumulation=accumulation)


def penalty(method, ctx: LoopContext, model, micro: MicroBatch, outputs=None) -> torch.Tensor:
    """What the method's loss adds to the answer NLL."""
    return method.loss(ctx, model, micro, outputs) - micro.nll()


def two_task_config(method: dict, *, steps: int = 40, checkpoint_every: int | None = None) -> LoopConfig:
    return loop_config([qa_items(16, 0), qa_items(16, 1)], steps=steps, method=method,
                       general=general_items(), checkpoint_every=checkpoint_every)


# ---------------------------------------------------------------------------------------------- l2


def test_l2_penalty_is_half_alpha_times_squared_distance_to_previous_weights():
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.bias.copy_(torch.tensor([0.5]))
    anchor = {"weight": torch.zeros(1, 2), "bias": torch.tensor([0.5])}
    penalty = l2_sp_penalty(layer, anchor, alpha=0.4)
    assert penalty.item() == pytest.approx(0.5 * 0.4 * (1.0**2 + 2.0**2))
    penalty.backward()  # ∂/∂θ = α (θ − θ_prev)
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[0.4, 0.8]]))
    torch.testing.assert_close(layer.bias.grad, torch.tensor([0.0]))


def test_l2_adds_nothing_in_task_0_and_anchors_at_the_end_of_the_previous_task():
    layer = torch.nn.Linear(2, 1)
    state = loop_state(layer)
    method = make_method("l2", alpha=2.0)
    method.before_task(state)
    micro = toy_micro()
    assert torch.equal(method.loss(state, layer, micro, None), micro.nll())  # task 0: the NLL alone
    method.after_task(state)
    assert penalty(method, state, layer, micro).item() == 0.0  # still at θ_prev
    with torch.no_grad():
        layer.weight += torch.tensor([[0.5, -1.0]])
    assert penalty(method, state, layer, micro).item() == pytest.approx(0.5 * 2.0 * (0.25 + 1.0))
    # A weight penalty counts once per optimizer step: each of 2 accumulated micro-batches adds half.
    assert penalty(method, state, layer, toy_micro(accumulation=2)).item() == pytest.approx(0.5 * 2.0 * 1.25 / 2)


# --------------------------------------------------------------------------------------------- lwf


def test_distillation_is_exactly_zero_for_an_identical_student_and_positive_after_a_perturbation():
    model = tiny_model()
    batch = collate_qa(qa_items(4, 2), pad_id=PAD, eos_id=EOS)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert distillation_loss(logits, logits.detach().clone(), batch["labels"], temperature=2.0).item() == 0.0
    perturbed = logits + 0.1 * torch.randn_like(logits)
    assert distillation_loss(perturbed, logits, batch["labels"], temperature=2.0).item() > 1e-4


def test_distillation_matches_a_hand_computed_kl_on_answer_positions_only():
    # Two answer positions (1 and 2 after the shift); position 0 is prompt and must not count.
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 0]])
    ln3 = math.log(3.0)
    teacher = torch.tensor([[[9.0, -9.0], [0.0, 2 * ln3], [1.0, 1.0], [0.0, 0.0]]])
    student = torch.tensor([[[-9.0, 9.0], [0.0, 0.0], [1.0, 1.0], [5.0, -5.0]]])
    # T = 2: position 1 has teacher p = (1/4, 3/4), student q = (1/2, 1/2); position 2 is identical.
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    expected = (kl + 0.0) / 2  # the LwF paper's term: no T² factor
    assert distillation_loss(student, teacher, labels, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)
    assert distillation_loss(student, teacher, labels, temperature=2.0,
                             t_squared=True).item() == pytest.approx(2.0**2 * expected, rel=1e-6)


def test_lwf_teacher_is_the_previous_task_model_frozen_and_unchanged_by_training():
    model = tiny_model()
    state = loop_state(model)
    method = make_method("lwf", lam=1.0, temperature=2.0)
    method.before_task(state)
    batch = StepBatch.of_task(qa_items(4, 3))
    micro, outputs = micro_batch(model, batch)
    assert method.teacher is None  # task 0: no teacher yet
    assert torch.equal(method.loss(state, model, micro, outputs), micro.nll())

    method.after_task(state)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    state.task = 1
    method.before_task(state)
    teacher = method.teacher
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        micro, outputs = micro_batch(model, batch)
        loss = method.loss(state, model, micro, outputs)
        if step == 0:
            assert (loss - micro.nll()).item() == 0.0  # the student starts as the teacher
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.grad is None for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, snapshot[name]), name
    assert not torch.equal(model.state_dict()["lm_head.weight"], snapshot["lm_head.weight"])
    assert penalty(method, state, model, *micro_batch(model, batch)).item() > 0


# -------------------------------------------------------------------------------------------- gere


def test_tm_loss_is_zero_when_every_activation_stays_beyond_the_margin_on_its_recorded_side():
    pos, neg = torch.ones(3), -torch.ones(3)
    states = torch.tensor([1, -1, 0], dtype=torch.int8).expand(2, 4, 1, 3)  # (B, T, L, H)
    hidden = torch.tensor([1.5, -1.5, 0.0]).expand(2, 4, 1, 3).clone()
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert threshold_margin_loss(hidden, states, pos, neg, mask, margin=0.2).item() == 0.0
    hidden[1, 2, 0, 2] = 0.9  # neutral neuron drifts into the margin below τ⁺
    assert threshold_margin_loss(hidden, states, pos, neg, mask, margin=0.2).item() == pytest.approx(0.1)


def test_tm_loss_matches_a_hand_computed_value_and_ignores_padding():
    pos, neg = torch.ones(3), -torch.ones(3)
    states = torch.tensor([[[[1, -1, 0]], [[1, -1, 0]]]], dtype=torch.int8)  # B=1, T=2, L=1, H=3
    hidden = torch.tensor([[[[1.2, -0.8, 0.7]], [[-50.0, 50.0, 50.0]]]])
    mask = torch.tensor([[True, False]])  # the second token is padding
    # margin 0.5: [1 + .5 − 1.2]₊ = .3, [−.8 + 1 + .5]₊ = .7, [.7 − 1 + .5]₊ + [−1 + .5 − .7]₊ = .2
    loss = threshold_margin_loss(hidden, states, pos, neg, mask, margin=0.5)
    assert loss.item() == pytest.approx((0.3 + 0.7 + 0.2) / 3)


def test_thresholds_are_mean_plus_minus_k_std_and_states_follow_them():
    activations = torch.tensor([[[0.0, 5.0]], [[2.0, 5.0]], [[1.0, 5.0]]])  # (N, L=1, H=2)
    pos, neg = activation_thresholds(activations, std_scale=1.0)
    std = math.sqrt(2 / 3)
    torch.testing.assert_close(pos, torch.tensor([[1 + std, 5.0]]))
    torch.testing.assert_close(neg, torch.tensor([[1 - std, 5.0]]))
    assert activation_states(activations, pos, neg)[:, 0, 0].tolist() == [-1, 1, 0]


def test_gere_mixes_general_samples_into_every_global_batch_at_the_configured_ratio():
    state = loop_state(tiny_model(), general=general_items())
    method = make_method("gere", replay_ratio=0.25, num_general=5)
    method.before_task(state)
    kept = set(state.general[:5])
    for step in range(6):
        batch = method.batch(state, step)
        assert len(batch) == 8 and list(batch.parts) == ["task", "general"]
        assert len(batch.parts["general"]) == 2  # round(0.25 · 8)
        assert all(item in kept for item in batch.parts["general"])
        assert len(batch.parts["task"]) == 6 and all(item in set(state.tasks[0]) for item in batch.parts["task"])
        assert not any(item in set(state.general[5:]) for _, item in batch.flat())  # only the kept ones
        assert method.batch(state, step) == batch  # a pure function of (seed, task, step)


def test_gere_thresholds_come_from_the_initial_model_and_survive_a_state_dict_round_trip(tmp_path):
    model = tiny_model()
    general = general_items()
    state = loop_state(model, general=general)
    method = make_method("gere", num_general=8, layers=None)
    method.before_task(state)

    # τ± from a direct forward of the initial model on the kept general samples (all layer outputs: layers=None).
    batch = collate_qa(general[:8], pad_id=PAD, eos_id=EOS)
    with torch.no_grad():
        hs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   output_hidden_states=True).hidden_states
    tokens = torch.stack(hs[1:], dim=2)[batch["attention_mask"].bool()]  # (N tokens, L, H)
    torch.testing.assert_close(method.pos_threshold, tokens.mean(0) + tokens.std(0, correction=0))
    torch.testing.assert_close(method.neg_threshold, tokens.mean(0) - tokens.std(0, correction=0))

    # The initial model violates nothing: the TM loss of the first step is zero.
    first = method.batch(state, 0)
    assert penalty(method, state, model, *micro_batch(model, first)).item() == 0.0

    # Training changes the model but not the record; a restored method keeps the same record.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state.task = 1
    method.before_task(state)
    torch.save(method.state_dict(), tmp_path / "method.pt")
    restored = make_method("gere", num_general=8)
    restored.load_state_dict(torch.load(tmp_path / "method.pt", weights_only=False))
    restored.before_task(state)  # must not re-record from the trained model
    for key in ("pos_threshold", "neg_threshold", "states"):
        assert torch.equal(getattr(restored, key), getattr(method, key)), key
    again = restored.batch(state, 0)
    assert penalty(restored, state, model, *micro_batch(model, again)).item() > 0  # the trained model has drifted


# ------------------------------------------------------------------------------- two tasks + resume

METHODS = [
    {"name": "l2", "params": {"alpha": 1.0}},
    {"name": "lwf", "params": {"lam": 1.0, "temperature": 2.0}},
    {"name": "gere", "params": {"replay_ratio": 0.25, "lam": 1.0, "num_general": 8}},
]


def _checkpoint_at(root: Path, task: int, step: int) -> Path:
    for checkpoint in sorted(root.glob("checkpoint_*")):
        position = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)["position"]
        if (position["method"], position["task"], position["step"]) == (0, task, step):
            return checkpoint
    raise AssertionError(f"no checkpoint at task {task} step {step} under {root}")


@pytest.mark.parametrize("method", METHODS, ids=[m["name"] for m in METHODS])
def test_two_task_run_finishes_and_resumes_bit_identically_mid_task_1_and_at_its_start(method, tmp_path):
    config = two_task_config(method, steps=40, checkpoint_every=20)
    full = run_without_ray(config, tmp_path / "full")["methods"][0]
    assert len(full["task_end"]) == 2
    assert all(math.isfinite(r["value"]) for r in full["records"])

    # Mid-task 1: before_task runs before the mid-task weights are loaded. Task boundary: the
    # model is already trained when before_task runs, so anything re-derived from it would differ.
    for task, step in [(1, 20), (1, 0)]:
        resumed = run_without_ray(config.with_(resume_from=str(_checkpoint_at(tmp_path / "full", task, step))),
                                  tmp_path / f"resumed_{task}_{step}")["methods"][0]
        assert resumed["records"] == full["records"], (task, step)
        assert resumed["task_end"] == full["task_end"], (task, step)
