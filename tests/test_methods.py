"""Every registered training method: its declaration, its parameters, and bit-exact resume through the loop."""

from __future__ import annotations

import inspect
import io
from pathlib import Path

import pytest
import torch

from palimpsest.catalog import methods_of
from palimpsest.train.checkpoint import STATE_FILE
from palimpsest.train.loop import run_without_ray
from palimpsest.train.methods import load_method_class

from synthetic import BOS, VOCAB, loop_config, method_run, qa_items
from palimpsest.train.batching import TokenizedQA

CONTINUAL = methods_of("continual")
# Small but non-trivial settings, so each method's state is exercised within 2 × 20 steps.
SETTINGS = {
    "replay": {"buffer_size": 12, "memory_batch_size": 4},
    "ewc": {"fisher_samples": 6},
    "fpf": {"k": 3, "buffer_size": 12, "fpf_steps": 2, "fraction": 0.2},
    "gere": {"replay_ratio": 0.25, "num_general": 6},
    "lora": {"r": 4},
}


def general_items(n: int = 10) -> list[TokenizedQA]:
    import numpy as np

    rng = np.random.default_rng(9)
    return [TokenizedQA((BOS,), tuple(rng.integers(3, VOCAB, size=rng.integers(4, 9)).tolist())) for _ in range(n)]


def test_the_statically_read_declaration_is_the_one_the_module_holds():
    assert set(CONTINUAL) == {"naive", "joint", "replay", "gere", "ewc", "l2", "lwf", "lora", "kappatune", "fpf"}
    for name, info in CONTINUAL.items():
        cls = load_method_class(info)
        module = inspect.getmodule(cls)
        assert module.METHOD == info, name
        # The constructor takes exactly the declared parameters: the declaration is the one source of defaults.
        arguments = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        assert arguments == [p.name for p in info.params] or (not info.params and arguments in ([], ["args", "kwargs"])), name
        for param in info.params:
            assert param.check(param.default) is None, (name, param.name)


def _state_bytes(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _checkpoint_at(root: Path, task: int, step: int, method: int = 0) -> Path:
    for checkpoint in sorted(root.glob("checkpoint_*")):
        position = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)["position"]
        if (position["method"], position["task"], position["step"]) == (method, task, step):
            return checkpoint
    raise AssertionError(f"no checkpoint at method {method} task {task} step {step} under {root}")


@pytest.mark.parametrize("name", sorted(CONTINUAL))
@pytest.mark.heavy
def test_every_method_resumes_bit_identically_mid_task_and_its_state_round_trips(name, tmp_path):
    """Two tasks × 20 steps; a resume from task 1 step 10 replays the uninterrupted run exactly."""
    run = method_run(name, **SETTINGS.get(name, {}))
    config = loop_config([qa_items(16, 0), qa_items(16, 1)], steps=20, methods=[run], general=general_items(),
                         checkpoint_every=10, eval_every=10)
    full = run_without_ray(config, tmp_path / "full")
    middle = _checkpoint_at(tmp_path / "full", task=1, step=10)
    resumed = run_without_ray(config.with_(resume_from=str(middle)), tmp_path / "resumed")
    (a,), (b,) = full["methods"], resumed["methods"]
    assert b["records"] == a["records"]
    assert b["task_end"] == a["task_end"]

    # The method's state as checkpointed at the end loads into a fresh instance and saves back identically.
    saved = torch.load(_checkpoint_at(tmp_path / "full", task=2, step=0) / STATE_FILE, weights_only=False)["method"]
    fresh = run.build()
    fresh.load_state_dict(saved)
    assert _state_bytes(fresh.state_dict()) == _state_bytes(saved)


@pytest.mark.heavy
def test_several_methods_in_one_run_resume_from_a_checkpoint_of_the_second(tmp_path):
    methods = [method_run("naive"), method_run("replay", buffer_size=8, memory_batch_size=4)]
    config = loop_config([qa_items(16, 0), qa_items(16, 1)], steps=10, methods=methods, checkpoint_every=5)
    full = run_without_ray(config, tmp_path / "full")
    assert [m["name"] for m in full["methods"]] == ["naive", "replay"]
    middle = _checkpoint_at(tmp_path / "full", task=1, step=5, method=1)
    resumed = run_without_ray(config.with_(resume_from=str(middle)), tmp_path / "resumed")
    for a, b in zip(full["methods"], resumed["methods"]):
        assert (a["name"], a["records"], a["task_end"]) == (b["name"], b["records"], b["task_end"])
    # Methods start from the same initial model: the first evaluation of task 0 before training is shared.
    assert full["baseline"] is not None


def test_readme_parameter_table_is_the_declarations():
    from palimpsest.catalog import parameter_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- parameter-table:continual -->") + len("<!-- parameter-table:continual -->\n")
    end = readme.index("<!-- /parameter-table -->")
    assert readme[start:end].strip() == parameter_table("continual"), "regenerate README's table"


def test_a_backend_can_take_over_the_loss_reduction_of_every_method():
    """The DP-SGD extension point: the step reduces answer-token losses the backend's way."""
    from palimpsest.train.backends import DDPBackend
    from palimpsest.train.config import Optimisation
    from palimpsest.train.hooks import LoopContext, StepBatch
    from palimpsest.train.step import train_step
    from synthetic import EOS, PAD, make_method, tiny_model

    class FrozenReduction(DDPBackend):
        calls = 0

        @staticmethod
        def loss_reduction(token_losses, token_mask, row_weights, global_tokens, world_size):
            FrozenReduction.calls += 1
            return token_losses.sum() * 0.0  # no gradient reaches the weights

    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    backend = FrozenReduction(model, Optimisation(steps=1, batch_size=4, weight_decay=0.0), world_size=1,
                              device=torch.device("cpu"))
    ctx = LoopContext(model=model, tasks=[qa_items(8, 0)], task=0, seed=0, batch_size=4, steps_per_task=1,
                      pad_id=PAD, eos_id=EOS)
    window = torch.zeros(2, dtype=torch.float64)
    train_step(ctx, make_method("naive"), backend, StepBatch.of_task(qa_items(4, 0)), accumulation=2, window=window)
    assert FrozenReduction.calls == 2 and window[1] > 0
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_a_micro_batch_gives_per_sequence_log_likelihoods_of_one_part():
    from palimpsest.train.batching import collate_qa, sequence_log_likelihood, token_losses
    from palimpsest.train.hooks import MicroBatch, StepBatch
    from synthetic import EOS, PAD, tiny_model

    batch = StepBatch({"forget": qa_items(3, 0), "retain": qa_items(2, 1)})
    inputs = collate_qa([item for _, item in batch.flat()], pad_id=PAD, eos_id=EOS)
    logits = tiny_model()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    losses, mask = token_losses(logits, inputs["labels"])
    micro = MicroBatch(inputs=inputs, part_of_row=[p for p, _ in batch.flat()], token_losses=losses, token_mask=mask,
                       step_batch=batch, world_size=1, accumulation=1)
    expected, counts = sequence_log_likelihood(logits, inputs["labels"])
    got, got_counts = micro.sequence_log_likelihood("retain")
    torch.testing.assert_close(got, expected[3:])
    assert got_counts.tolist() == counts[3:].tolist() == [len(it.answer) + 1 for it in qa_items(2, 1)]
    # nll("forget") is the forget part's token mean over the whole global batch
    torch.testing.assert_close(micro.nll("forget"), -expected[:3].sum() / counts[:3].sum())
