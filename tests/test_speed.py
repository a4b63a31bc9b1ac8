"""The speed options change how a step is computed, not what: parity on CPU, the refusals, no host sync per step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from palimpsest.spec import SpecError, parse_spec
from palimpsest.train.backends import DDPBackend
from palimpsest.train.batching import collate_qa, token_losses
from palimpsest.train.config import Optimisation
from palimpsest.train.hooks import LoopContext, StepBatch
from palimpsest.train.step import train_step

from synthetic import EOS, PAD, make_method, qa_items, tiny_model

PLATFORM = str(Path(__file__).resolve().parent.parent / "platform" / "palimpsest")


def is_checkpointing(model) -> bool:
    return model.is_activation_checkpointing if hasattr(model, "is_activation_checkpointing") else \
        model.is_gradient_checkpointing


def loss_and_grads(model, items, *, precision: str = "fp32"):
    """One padded batch's mean answer NLL and its gradients, with the backend's autocast."""
    from palimpsest.train.speed import autocast

    model.train()
    model.zero_grad(set_to_none=True)
    inputs = collate_qa(items, pad_id=PAD, eos_id=EOS)
    with autocast(precision, torch.device("cpu")):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        losses, mask = token_losses(logits.float(), inputs["labels"])
        loss = losses.sum() / mask.sum()
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def assert_same(a, b, *, atol: float, rtol: float = 0.0):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, atol=atol, rtol=rtol)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=atol, rtol=rtol, msg=name)


def items():
    return qa_items(6, 0)  # prompts and answers of different lengths: padded rows and their masks


def test_sdpa_and_eager_attention_give_the_same_losses_and_gradients():
    sdpa, eager = tiny_model(attn_implementation="sdpa"), tiny_model(attn_implementation="eager")
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    eager.load_state_dict(sdpa.state_dict())
    assert_same(loss_and_grads(sdpa, items()), loss_and_grads(eager, items()), atol=1e-5)


def test_the_default_attention_is_sdpa_from_the_spec_to_the_worker():
    from palimpsest.models import build_model, model_config

    spec = parse_spec({"kind": "train", "name": "x", "data": {"source": "factworld", "num_entities": 8}})
    assert spec.model.attn_implementation == "sdpa"
    cfg = model_config(spec.model.model_dump(), vocab_size=300, pad_id=PAD, bos_id=None, eos_id=EOS, seed=0)
    assert build_model(cfg).config._attn_implementation == "sdpa"
    eager = model_config({**spec.model.model_dump(), "attn_implementation": "eager"}, vocab_size=300, pad_id=PAD,
                         bos_id=None, eos_id=EOS, seed=0)
    assert build_model(eager).config._attn_implementation == "eager"


def test_activation_checkpointing_recomputes_the_same_gradients():
    from palimpsest.train.speed import prepare_model

    plain, checkpointed = tiny_model(), tiny_model()
    checkpointed.load_state_dict(plain.state_dict())
    prepare_model(checkpointed, activation_checkpointing=True, compile=False)
    assert is_checkpointing(checkpointed) and not is_checkpointing(plain)
    assert_same(loss_and_grads(plain, items()), loss_and_grads(checkpointed, items()), atol=1e-6)


def test_bf16_autocast_keeps_fp32_weights_and_gradients_and_the_loss_within_bf16_rounding():
    model = tiny_model()
    fp32 = loss_and_grads(model, items())
    bf16 = loss_and_grads(model, items(), precision="bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(g.dtype == torch.float32 for g in bf16[1].values())
    torch.testing.assert_close(bf16[0], fp32[0], rtol=2e-2, atol=0.0)
    assert not torch.equal(bf16[0], fp32[0])  # the forward did run in bf16


def one_step(precision: str, **training):
    model = tiny_model()
    backend = DDPBackend(model, Optimisation(steps=2, batch_size=4, precision=precision, **training), world_size=1,
                         device=torch.device("cpu"))
    ctx = LoopContext(model=model, tasks=[qa_items(8, 0)], task=0, seed=0, batch_size=4, steps_per_task=2,
                      pad_id=PAD, eos_id=EOS)
    window = torch.zeros(2, dtype=torch.float64)
    norm = train_step(ctx, make_method("naive"), backend, StepBatch.of_task(qa_items(4, 0)), accumulation=1,
                      window=window)
    return backend, window, norm


def test_the_ddp_backend_autocasts_its_forward_and_fp16_scales_the_loss():
    plain, plain_window, plain_norm = one_step("fp32")
    assert plain.precision == "fp32" and plain.scaler is None
    for precision in ("bf16", "fp16"):
        backend, window, norm = one_step(precision)
        assert backend.precision == precision
        assert (backend.scaler is not None) == (precision == "fp16")
        # The same loss and pre-clip gradient norm as fp32 within the half type's rounding: the scaler
        # unscales before the norm is taken.
        torch.testing.assert_close(window, plain_window, rtol=2e-2, atol=0.0)
        assert not torch.equal(window, plain_window)  # the forward did run at half precision
        torch.testing.assert_close(norm, plain_norm, rtol=5e-2, atol=0.0)
        assert all(p.dtype == torch.float32 for p in backend.model.parameters())
    assert "scaler" in backend.state_dict() and "scaler" not in plain.state_dict()


def test_auto_precision_is_fp32_on_cpu_and_under_dp_sgd(monkeypatch):
    from palimpsest.train.speed import resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # a GPU that has bf16
    assert resolve_precision("auto", cuda) == "bf16"
    assert resolve_precision("auto", cuda, private=True) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # one that has not (V100)
    assert resolve_precision("auto", cuda) == "fp32"
    assert one_step("auto")[0].precision == "fp32"


@pytest.mark.heavy
def test_a_compiled_model_takes_the_same_step_as_the_eager_one():
    """torch.compile (inductor, on CPU) in place: the same module, the same loss and gradient norm."""
    eager, eager_window, eager_norm = one_step("fp32")
    compiled, window, norm = one_step("fp32", compile=True)
    model = compiled.model
    assert getattr(model, "_compiled_call_impl", None) is not None and type(model) is type(eager.model)
    torch.testing.assert_close(window, eager_window, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(norm, eager_norm, rtol=1e-4, atol=0.0)
    assert set(model.state_dict()) == set(eager.model.state_dict())  # checkpoints keep their keys


class CountHostSyncs(TorchFunctionMode):
    """Counts the tensor calls that wait for the device (.item, .cpu, .tolist, float(), bool(), .numpy) made
    from our code (torch's own internals are not ours to change)."""

    SYNCS = {"item", "cpu", "tolist", "__float__", "__int__", "__bool__", "numpy"}

    def __init__(self, roots: tuple[str, ...] = (PLATFORM,)):
        super().__init__()
        self.roots, self.calls = roots, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.SYNCS:
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(self.roots):
                self.calls.append(f"{name} at {Path(caller.f_code.co_filename).name}:{caller.f_lineno}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_training_step_never_waits_for_the_device(precision):
    """Losses and gradient norms stay on the device (read at log_every), so a GPU step queues without a sync."""
    model = tiny_model()
    backend = DDPBackend(model, Optimisation(steps=4, batch_size=4, precision=precision), world_size=1,
                         device=torch.device("cpu"))
    ctx = LoopContext(model=model, tasks=[qa_items(8, 0)], task=0, seed=0, batch_size=4, steps_per_task=4,
                      pad_id=PAD, eos_id=EOS)
    method, window = make_method("naive"), torch.zeros(2, dtype=torch.float64)
    with CountHostSyncs() as counter:
        for step in range(2):
            batch = backend.choose_batch(method, ctx, step)
            train_step(ctx, method, backend, batch, accumulation=2, window=window)
            method.after_step(ctx, step + 1, batch)
    assert counter.calls == []
    # The counter sees a sync: one read of the window is one.
    with CountHostSyncs(roots=(PLATFORM, __file__)) as counter:
        (window[0] / window[1]).item()
    assert len(counter.calls) == 1


SPEED_REFUSALS = [
    ({"training": {"precision": "bf16"}, "privacy": {"epsilon": 8.0}}, "training.precision: bf16 with privacy"),
    ({"training": {"precision": "fp16"}, "privacy": {"epsilon": 8.0}}, "training.precision: fp16 with privacy"),
    ({"training": {"activation_checkpointing": True}, "privacy": {"epsilon": 8.0}},
     "training.activation_checkpointing: not with privacy"),
    ({"training": {"compile": True}, "privacy": {"epsilon": 8.0}}, "training.compile: not with privacy"),
    ({"training": {"compile": True, "backend": "deepspeed"}}, "training.compile: DeepSpeed"),
    ({"model": {"attn_implementation": "flash_attention_2"}}, "flash_attention_2 runs on GPUs only"),
    ({"model": {"attn_implementation": "flash_attention_2"}, "scaling": {"use_gpu": True},
      "training": {"precision": "fp32"}}, "flash_attention_2 needs bf16 or fp16"),
    ({"training": {"precision": "bf16", "deepspeed": {"precision": "fp32"}}}, "deepspeed.precision (its older name)"),
    ({"training": {"packing": True}, "privacy": {"epsilon": 8.0}}, "training.packing: not with privacy"),
    ({"training": {"precision": "fp16", "backend": "deepspeed"}}, "DeepSpeed's fp16 mode runs on GPUs only"),
]


@pytest.mark.parametrize("extra,expected", SPEED_REFUSALS, ids=[e for _, e in SPEED_REFUSALS])
def test_validate_refuses_the_combinations_that_are_not_supported_with_the_reason(extra, expected):
    document = {"kind": "train", "name": "x", "data": {"source": "factworld", "num_entities": 8}, **extra}
    with pytest.raises(SpecError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(document)


def test_what_is_allowed_passes_and_the_older_deepspeed_precision_moves_to_training_precision():
    base = {"kind": "train", "name": "x", "data": {"source": "factworld", "num_entities": 8}}
    private = parse_spec({**base, "training": {"precision": "fp32"}, "privacy": {"epsilon": 8.0}})
    assert private.training.precision == "fp32"
    assert parse_spec({**base, "privacy": {"epsilon": 8.0}}).training.precision == "auto"
    fast = parse_spec({**base, "training": {"precision": "bf16", "activation_checkpointing": True, "compile": True}})
    assert fast.training.compile and fast.training.activation_checkpointing
    older = parse_spec({**base, "training": {"backend": "deepspeed", "deepspeed": {"precision": "bf16"}}})
    assert older.training.precision == "bf16" and older.training.deepspeed.precision is None
    with pytest.raises(SpecError, match="training.precison: unknown key; did you mean 'precision'"):
        parse_spec({**base, "training": {"precison": "bf16"}})


def test_methods_that_read_the_outputs_by_row_are_refused_with_packing_and_the_others_pass():
    from palimpsest.catalog import methods_of

    refused = {name for family in ("continual", "unlearning") for name, info in methods_of(family).items()
               if info.packing_reason}
    assert refused == {"gere", "lwf", "ce_u", "undial"}
    stream = {"source": "factworld", "num_entities": 8, "num_tasks": 2}
    with pytest.raises(SpecError, match=r"methods\[1\]: lwf cannot train on packed rows"):
        parse_spec({"kind": "continual", "name": "x", "stream": stream, "methods": ["naive", "lwf"],
                    "training": {"packing": True}})
    spec = parse_spec({"kind": "continual", "name": "x", "stream": stream, "methods": ["naive", "replay", "ewc"],
                       "training": {"packing": True}})
    assert spec.training.packing


def packed_loss_and_grads(model, examples, *, row_tokens: int):
    from palimpsest.train.step import _packed_forward

    model.train()
    model.zero_grad(set_to_none=True)
    ctx = LoopContext(model=model, tasks=[examples], task=0, seed=0, batch_size=len(examples), steps_per_task=1,
                      pad_id=PAD, eos_id=EOS)
    _, losses, mask = _packed_forward(model, examples, ctx, row_tokens)
    loss = losses.sum() / mask.sum()
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}, losses.detach(), mask


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("row_tokens", [4096, 24])
def test_packed_rows_give_the_padded_losses_and_gradients(attention, row_tokens):
    """One row for the whole micro-batch, or several (24 tokens: about two examples each)."""
    model = tiny_model(attn_implementation=attention)
    examples = items()
    padded_loss, padded_grads = loss_and_grads(model, examples)
    packed_loss, packed_grads, losses, mask = packed_loss_and_grads(model, examples, row_tokens=row_tokens)
    assert_same((packed_loss, packed_grads), (padded_loss, padded_grads), atol=1e-5)
    # Per example and per token, in the padded layout the methods read.
    inputs = collate_qa(examples, pad_id=PAD, eos_id=EOS)
    with torch.no_grad():
        reference, reference_mask = token_losses(model(**{k: inputs[k] for k in ("input_ids", "attention_mask")})
                                                 .logits, inputs["labels"])
    assert torch.equal(mask, reference_mask)
    torch.testing.assert_close(losses, reference, atol=1e-5, rtol=0.0)


def test_a_packed_row_holds_no_padding_and_restarts_positions_per_example():
    from palimpsest.train.packing import pack_qa

    examples = items()
    lengths = [len(it.prompt) + len(it.answer) + 1 for it in examples]
    packed = pack_qa(examples, pad_id=PAD, eos_id=EOS, row_tokens=4096)
    assert packed.input_ids.shape == (1, sum(lengths))  # every token is an example's
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    assert [int(packed.position_ids[0, s]) for s in starts] == [0] * len(lengths)
    padded = collate_qa(examples, pad_id=PAD, eos_id=EOS)["input_ids"]
    assert packed.input_ids.numel() < padded.numel()
    split = pack_qa(examples, pad_id=PAD, eos_id=EOS, row_tokens=24)
    assert split.input_ids.size(0) > 1 and split.input_ids.size(1) <= max(24, max(lengths))


def test_a_packed_training_step_takes_the_padded_step():
    padded, padded_window, padded_norm = one_step("fp32")
    packed, window, norm = one_step("fp32", packing=True, packing_row_tokens=4096)
    assert packed.packing_row_tokens == 4096 and padded.packing_row_tokens is None
    torch.testing.assert_close(window, padded_window, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(norm, padded_norm, rtol=1e-5, atol=0.0)
    # Adam's first step moves every weight by about lr (3e-3) whatever its gradient's size, so a weight whose
    # gradient is ~0 may differ by a little of that; the gradients themselves agree within 1e-5 (above).
    for a, b in zip(packed.model.parameters(), padded.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0.0)


@pytest.mark.heavy
def test_through_the_loop_packing_and_checkpointing_keep_the_loss_curve_under_ddp_and_deepspeed(tmp_path,
                                                                                                monkeypatch):
    """12 steps of the shared loop (world size 1): the options reach both backends and change no loss."""
    import numpy as np

    from synthetic import loop_config

    from palimpsest.train import speed, step
    from palimpsest.train.loop import run_without_ray

    seen = {"packed": 0, "checkpointing": 0}
    packed_forward, prepare = step._packed_forward, speed.prepare_model

    def counting_forward(*args, **kwargs):  # the real forward, counted
        seen["packed"] += 1
        return packed_forward(*args, **kwargs)

    def counting_prepare(model, **options):
        model = prepare(model, **options)
        seen["checkpointing"] += bool(is_checkpointing(model))
        return model

    monkeypatch.setattr(step, "_packed_forward", counting_forward)
    for module in ("palimpsest.train.backends", "palimpsest.train.deepspeed_backend"):
        monkeypatch.setattr(f"{module}.prepare_model", counting_prepare)

    def curve(name, **training):
        seen.update(packed=0, checkpointing=0)
        result = run_without_ray(loop_config(steps=12, log_every=1, eval_every=None, **training), tmp_path / name)
        method = result["methods"][0]
        seen["precision"] = method["precision"]
        return [r["value"] for r in method["records"] if r["metric"] == "train_loss"], dict(seen)

    plain, counts = curve("plain")
    assert len(plain) == 12 and plain[-1] < plain[0]
    assert counts == {"packed": 0, "checkpointing": 0, "precision": "fp32"}  # auto on CPU
    fast = dict(packing=True, packing_row_tokens=48, activation_checkpointing=True)
    for name, backend in (("ddp-fast", {}), ("zero1-fast", {"backend": "deepspeed", "zero_stage": 1})):
        losses, counts = curve(name, **fast, **backend)
        assert counts == {"packed": 12, "checkpointing": 1, "precision": "fp32"}, name  # every step packed
        np.testing.assert_allclose(losses, plain, rtol=1e-4, err_msg=name)
    # DeepSpeed's own bf16 mode (it casts the module; fp32 master weights): the first steps within bf16
    # rounding (at lr 1e-2 the two runs drift apart after a few more).
    bf16, counts = curve("zero1-bf16", backend="deepspeed", zero_stage=1, precision="bf16")
    assert counts["precision"] == "bf16"
    np.testing.assert_allclose(bf16[:4], plain[:4], rtol=2e-2)
    assert bf16 != plain


@pytest.mark.heavy
def test_an_fp16_run_resumed_mid_task_replays_exactly_with_its_loss_scale(tmp_path):
    """The loss scaler's state is checkpointed: a resume from step 4 of 12 gives the uninterrupted records."""
    from synthetic import loop_config

    from palimpsest.train.checkpoint import load_checkpoint
    from palimpsest.train.loop import run_without_ray

    config = loop_config(steps=12, checkpoint_every=4, log_every=1, eval_every=None, precision="fp16", packing=True)
    full = run_without_ray(config, tmp_path / "full")["methods"][0]
    assert full["precision"] == "fp16"
    middle = sorted((tmp_path / "full").glob("checkpoint_*"))[0]
    assert "scaler" in load_checkpoint(str(middle)).backend
    resumed = run_without_ray(config.with_(resume_from=str(middle)), tmp_path / "resumed")["methods"][0]
    assert resumed["records"] == full["records"]
    # The scaler went on from where it was: at step 8 its growth tracker (steps since the last overflow) is 8, not 4.
    at_8 = {run: load_checkpoint(str(sorted((tmp_path / run).glob("checkpoint_*"))[-2])).backend["scaler"]
            for run in ("full", "resumed")}
    assert at_8["resumed"] == at_8["full"] and at_8["full"]["_growth_tracker"] == 8


def test_a_row_fills_to_exactly_its_token_limit_and_not_one_more():
    from palimpsest.train.batching import TokenizedQA
    from palimpsest.train.packing import pack_qa

    five = TokenizedQA((1, 5), (6, 7))  # 2 + 2 + eos = 5 tokens
    assert pack_qa([five, five], pad_id=PAD, eos_id=EOS, row_tokens=10).input_ids.shape == (1, 10)
    assert pack_qa([five, five], pad_id=PAD, eos_id=EOS, row_tokens=9).input_ids.shape == (2, 5)
