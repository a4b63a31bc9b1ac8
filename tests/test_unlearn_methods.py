"""Each unlearning method does what its paper says, on the shared loop (no Ray: `run_without_ray`)."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from palimpsest.catalog import methods_of
from palimpsest.models import build_model
from palimpsest.train.batching import TokenizedQA, collate_qa, sequence_log_likelihood, token_losses
from palimpsest.train.checkpoint import STATE_FILE
from palimpsest.train.config import Evaluation, LoopConfig, MethodRun, Optimisation
from palimpsest.train.hooks import LoopContext, MicroBatch, StepBatch
from palimpsest.train.loop import run_without_ray
from palimpsest.train.methods import load_method_class
from palimpsest.unlearn.base import FORGET, RETAIN

from synthetic import EOS, PAD, qa_items, tiny_model_cfg

UNLEARNING = methods_of("unlearning")
ITEMS = qa_items(40, seed=1)
FORGET_SETS = [ITEMS[:4], ITEMS[4:8]]
REMAINING = [ITEMS[4:], ITEMS[8:]]
BASE, TARGET, DP_BASE = tiny_model_cfg(seed=5), tiny_model_cfg(seed=0), tiny_model_cfg(seed=7)


def unlearning_run(name: str, **params) -> MethodRun:
    info = UNLEARNING[name]
    assert not info.check_params(params), info.check_params(params)
    return MethodRun(info.name, info.module, info.implementation, info.resolve(params))


class Recorder:
    """A task-end hook keeping each request's final weights (in-process: run_without_ray)."""

    def __init__(self):
        self.weights: list[dict] = []

    def __call__(self, end) -> list[dict]:
        self.weights.append({k: v.detach().clone() for k, v in end.model.state_dict().items()})
        return []


def config(run: MethodRun, *, steps: int = 6, lr: float = 1e-2, **changes) -> LoopConfig:
    return LoopConfig(
        seed=3, model=TARGET, models={"base": BASE, "target": TARGET, "dp_base": TARGET},
        optimisation=Optimisation(steps=steps, batch_size=4, lr=lr, lr_schedule="constant", max_grad_norm=None,
                                  **changes),
        evaluation=Evaluation(), tasks=FORGET_SETS, eval_sets={},
        pools={RETAIN: REMAINING, "idk": [IDK_ANSWERS] * len(FORGET_SETS)}, methods=[run],
        task_end=Recorder(), threads=1)


def context(model=None, task: int = 0) -> LoopContext:
    return LoopContext(model=model if model is not None else build_model(TARGET), tasks=FORGET_SETS, task=task,
                       seed=3, batch_size=4, steps_per_task=6, pad_id=PAD, eos_id=EOS,
                       pools={RETAIN: REMAINING[task]}, models={"base": BASE, "target": TARGET, "dp_base": DP_BASE})


def micro_batch(model, batch: StepBatch) -> MicroBatch:
    flat = batch.flat()
    inputs = collate_qa([item for _, item in flat], pad_id=PAD, eos_id=EOS)
    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    losses, mask = token_losses(outputs.logits, inputs["labels"])
    return MicroBatch(inputs=inputs, part_of_row=[p for p, _ in flat], token_losses=losses, token_mask=mask,
                      step_batch=batch, world_size=1, accumulation=1)


def log_likelihoods(model, items):
    inputs = collate_qa(items, pad_id=PAD, eos_id=EOS)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    return sequence_log_likelihood(logits, inputs["labels"])


def nudge(model, scale: float = 0.05, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def test_every_declaration_is_its_modules_and_the_constructor_takes_its_parameters():
    assert set(UNLEARNING) == {"retrain", "grad_ascent", "grad_diff", "npo", "simnpo", "rmu", "gs_lora", "dp2u",
                               "wga", "satimp", "ce_u", "idk_nll", "undial", "idk_dpo"}
    for name, info in UNLEARNING.items():
        cls = load_method_class(info)
        assert inspect.getmodule(cls).METHOD == info, name
        arguments = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        assert arguments == [p.name for p in info.params] or (not info.params and arguments in ([], ["args", "kwargs"])), name
        assert info.paper, name


def test_grad_ascent_is_minus_the_forget_nll_and_grad_diff_adds_the_retain_nll():
    model = build_model(TARGET)
    batch = StepBatch({FORGET: FORGET_SETS[0], RETAIN: REMAINING[0][:4]})
    micro = micro_batch(model, batch)
    forget_nll = micro.token_losses[micro.rows(FORGET)].sum() / micro.token_mask[micro.rows(FORGET)].sum()
    retain_nll = micro.token_losses[micro.rows(RETAIN)].sum() / micro.token_mask[micro.rows(RETAIN)].sum()
    ascent = unlearning_run("grad_ascent").build()
    assert torch.allclose(ascent.loss(None, model, micro, None), -forget_nll)
    diff = unlearning_run("grad_diff", forget_weight=0.5, retain_weight=2.0).build()
    assert torch.allclose(diff.loss(None, model, micro, None), -0.5 * forget_nll + 2.0 * retain_nll)
    assert set(diff.batch(context(), 0).parts) == {FORGET, RETAIN} and set(ascent.batch(context(), 0).parts) == {FORGET}


def test_npo_on_a_hand_case_with_a_known_reference():
    """−(2/β)·log σ(−β·(log π − log π_ref)) per sequence (summed token log-probs), π_ref = the model at the start."""
    beta = 0.5
    ctx = context()
    method = unlearning_run("npo", beta=beta, retain_weight=0.0).build()
    method.before_task(ctx)
    batch = StepBatch({FORGET: FORGET_SETS[0]})
    # At the reference itself every log-ratio is 0: the loss is (2/β)·log 2 exactly.
    at_reference = method.loss(ctx, ctx.model, micro_batch(ctx.model, batch), None)
    assert at_reference.item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)
    reference = copy.deepcopy(ctx.model)
    nudge(ctx.model)
    loss = method.loss(ctx, ctx.model, micro_batch(ctx.model, batch), None)
    current, lengths = log_likelihoods(ctx.model, FORGET_SETS[0])
    before, _ = log_likelihoods(reference, FORGET_SETS[0])
    expected = (-2 / beta * F.logsigmoid(-beta * (current - before))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    per_token = (-2 / beta * F.logsigmoid(-beta * (current - before) / lengths)).mean()  # a plausible wrong form
    assert abs(per_token.item() - expected.item()) > 0.01 * expected.item()


def test_npo_takes_its_reference_at_each_request_start_and_keeps_it_across_a_resume():
    ctx = context()
    method = unlearning_run("npo").build()
    method.before_task(ctx)
    nudge(ctx.model)
    ctx.task = 1
    method.before_task(ctx)  # request 2 starts from the model request 1 left
    assert all(torch.equal(a, b) for a, b in zip(method.reference.model.state_dict().values(),
                                                 ctx.model.state_dict().values()))
    restored = unlearning_run("npo").build()
    restored.load_state_dict(method.state_dict())
    fresh = context(task=1)  # a resume mid-request: before_task sees the fresh target, not the saved weights
    restored.before_task(fresh)
    assert all(torch.equal(a, b) for a, b in zip(restored.reference.model.state_dict().values(),
                                                 ctx.model.state_dict().values()))


def test_simnpo_is_length_normalised_and_reference_free():
    beta, margin = 0.2, 0.3
    ctx = context()
    method = unlearning_run("simnpo", beta=beta, margin=margin, forget_weight=1.0, retain_weight=0.0).build()
    batch = StepBatch({FORGET: FORGET_SETS[0]})
    loss = method.loss(ctx, ctx.model, micro_batch(ctx.model, batch), None)
    current, lengths = log_likelihoods(ctx.model, FORGET_SETS[0])
    expected = (-2 / beta * F.logsigmoid(-beta * current / lengths - margin)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    unnormalised = (-2 / beta * F.logsigmoid(-beta * current - margin)).mean()
    assert abs(unnormalised.item() - expected.item()) > 0.1 * expected.item()
    assert UNLEARNING["simnpo"].defaults() == {"beta": 4.5, "margin": 0.0, "forget_weight": 0.125, "retain_weight": 1.0}


def test_rmu_steers_the_chosen_layers_forget_activations_only_and_trains_only_down_proj(tmp_path):
    from palimpsest.unlearn.rmu import control_vector, decoder_layers

    run = unlearning_run("rmu", layer=1, steering_coeff=4.0, retain_weight=50.0)
    cfg = config(run, steps=30, lr=5e-3)
    run_without_ray(cfg, tmp_path)
    after = build_model(TARGET)
    after.load_state_dict(cfg.task_end.weights[0])
    before = build_model(TARGET)
    changed = {n for n, v in before.state_dict().items() if not torch.equal(v, cfg.task_end.weights[0][n])}
    assert changed == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}

    def activations(model, items):
        captured = {}
        handle = decoder_layers(model)[1].register_forward_hook(lambda m, i, o: captured.update(h=o[0] if isinstance(o, tuple) else o))
        inputs = collate_qa(items, pad_id=PAD, eos_id=EOS)
        with torch.no_grad():
            model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        handle.remove()
        return captured["h"][inputs["labels"] != -100]

    target = control_vector(before.config.hidden_size, 3, 4.0)
    forget_before = ((activations(before, FORGET_SETS[0]) - target) ** 2).mean()
    forget_after = ((activations(after, FORGET_SETS[0]) - target) ** 2).mean()
    assert forget_after < 0.2 * forget_before  # forget activations went most of the way to c·u
    retain = REMAINING[0][4:16]
    drift = ((activations(after, retain) - activations(before, retain)) ** 2).mean()
    moved = ((activations(after, FORGET_SETS[0]) - activations(before, FORGET_SETS[0])) ** 2).mean()
    assert drift < 0.1 * moved  # retain activations stayed near the frozen model's


def test_gs_lora_keeps_base_weights_bit_identical_and_a_later_request_never_undoes_an_earlier_one(tmp_path):
    cfg = config(unlearning_run("gs_lora", r=4), steps=6)
    run_without_ray(cfg, tmp_path)
    first, second = cfg.task_end.weights
    target = build_model(TARGET).state_dict()
    for name, value in second.items():
        if "lora_" not in name:
            assert torch.equal(value, target[name.replace("base_model.model.", "").replace(".base_layer", "")]), name
    request0 = {n: v for n, v in first.items() if ".request0." in n}
    assert request0 and all(torch.equal(second[n], v) for n, v in request0.items())
    assert any(".request1." in n for n in second)


def test_gs_lora_group_sparsity_zeroes_whole_blocks_under_a_strong_penalty(tmp_path):
    from palimpsest.unlearn.gs_lora import GSLoRA

    def group_norms(weights, request="request0"):
        norms = {}
        for name, value in weights.items():
            if f".{request}." in name and "lora_B" in name:
                block = int(name.split(".layers.")[1].split(".")[0])
                norms[block] = norms.get(block, 0.0) + float((value ** 2).sum())
        return norms

    free = config(unlearning_run("gs_lora", r=4, group_weight=0.0), steps=8)
    run_without_ray(free, tmp_path / "free")
    assert all(v > 1e-8 for v in group_norms(free.task_end.weights[0]).values())
    strong = config(unlearning_run("gs_lora", r=4, group_weight=50.0, prox=True), steps=8)
    run_without_ray(strong, tmp_path / "prox")
    assert group_norms(strong.task_end.weights[0]) and all(v == 0.0 for v in group_norms(strong.task_end.weights[0]).values())
    penalty = GSLoRA(r=4, lora_alpha=16.0, target_modules=["gate_proj"], beta=0.15, bound=None, group_weight=1.0,
                     prox=False)
    assert penalty.bound is None  # default BND: ln(vocabulary size), the NLL of a uniform guess


def test_retrain_starts_every_request_from_the_base_on_what_remains_with_the_original_recipe():
    from palimpsest.train.config import Optimisation as Opt

    method = unlearning_run("retrain", seed_offset=0).build()  # the retain model's recipe (default 1: another seed)
    ctx = context(task=1)
    nudge(ctx.model)
    method.before_task(ctx)
    base = build_model(BASE).state_dict()
    assert all(torch.equal(v, base[k]) for k, v in ctx.model.state_dict().items())
    batch = method.batch(ctx, 0)
    assert set(batch.parts) == {RETAIN}
    assert not {id(i) for i in batch.parts[RETAIN]} & {id(i) for i in FORGET_SETS[0] + FORGET_SETS[1]}
    original = Opt(steps=300, batch_size=16)
    assert method.schedule(Opt(steps=10, batch_size=4), original) is original


def test_dp2u_serves_each_request_from_the_dp_base_for_a_fraction_of_retraining():
    from palimpsest.train.config import Optimisation as Opt

    method = unlearning_run("dp2u").build()
    assert method.schedule(Opt(steps=10, batch_size=4), Opt(steps=300, batch_size=16, warmup_steps=20)).steps == 150
    ctx = context(task=1)
    nudge(ctx.model)  # the model after request 1: dp2u must not continue from it
    method.before_task(ctx)
    base, target = build_model(DP_BASE).state_dict(), build_model(TARGET).state_dict()
    assert all(torch.equal(v, base[k]) for k, v in ctx.model.state_dict().items())  # the DP base
    assert not all(torch.equal(v, target[k]) for k, v in ctx.model.state_dict().items())  # not the deployed target


RESUME_SETTINGS = {"rmu": {"layer": 1, "retain_weight": 10.0}, "gs_lora": {"r": 4}}
IDK_ANSWERS = [TokenizedQA((), (40, 41, 42)), TokenizedQA((), (43, 44))]  # two "I don't know" answers, as token ids


@pytest.mark.parametrize("name", sorted(UNLEARNING))
def test_every_method_resumes_bit_identically_mid_request_and_at_a_request_boundary(name, tmp_path):
    run = unlearning_run(name, **RESUME_SETTINGS.get(name, {}))
    cfg = config(run, steps=6, checkpoint_every=3)
    if name in ("retrain", "dp2u"):
        cfg = cfg.with_(methods=[MethodRun(**{**vars(run), "optimisation": cfg.optimisation})])
    run_without_ray(cfg, tmp_path / "full")
    for position in ((1, 3), (1, 0)):
        checkpoint = _checkpoint_at(tmp_path / "full", *position)
        again = cfg.with_(resume_from=str(checkpoint), task_end=Recorder())
        run_without_ray(again, tmp_path / f"resumed-{position[1]}")
        final = again.task_end.weights[-1]
        assert final.keys() == cfg.task_end.weights[-1].keys()
        assert all(torch.equal(final[k], cfg.task_end.weights[-1][k]) for k in final), (name, position)


def _checkpoint_at(root, task: int, step: int):
    for checkpoint in sorted(root.glob("checkpoint_*")):
        position = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)["position"]
        if (position["task"], position["step"]) == (task, step):
            return checkpoint
    raise AssertionError(f"no checkpoint at task {task} step {step}")



def test_readme_parameter_table_is_the_declarations():
    from pathlib import Path

    from palimpsest.catalog import parameter_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- parameter-table:unlearning -->") + len("<!-- parameter-table:unlearning -->\n")
    end = readme.index("<!-- /parameter-table -->", start)
    assert readme[start:end].strip() == parameter_table("unlearning"), "regenerate README's table"


FLOP_CASES = [("grad_ascent", {}, False), ("grad_diff", {}, False), ("npo", {}, False), ("simnpo", {}, False),
              ("wga", {}, False), ("ce_u", {}, False), ("undial", {}, False),
              ("rmu", {"layer": 1, "retain_weight": 10.0}, False), ("gs_lora", {"r": 4}, False),
              ("retrain", {}, False), ("npo", {}, True)]


@pytest.mark.parametrize("name, params, gu", FLOP_CASES, ids=[f"{n}{'+gu' if g else ''}" for n, _, g in FLOP_CASES])
def test_the_flops_count_every_forward_and_backward_the_method_runs(name, params, gu, tmp_path):
    """Done-means 3 (#22): reference and frozen models, GU's per-sample gradients and LoRA, against an independent
    count of the model calls (a global hook on the token embedding: one call per forward pass of a model)."""
    from palimpsest.unlearn.gu import wrap

    run = unlearning_run(name, **params)
    run = wrap(run, 3) if gu else run
    calls: list[tuple[int, bool]] = []

    def embedding_call(module, args):
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == TARGET["vocab_size"]:
            calls.append((args[0].numel(), torch.is_grad_enabled()))

    ends = []

    class Keep(Recorder):
        def __call__(self, end):
            ends.append(end)
            trainable = sum(p.numel() for p in end.model.parameters() if p.requires_grad)
            ends[-1] = (end, sum(p.numel() for p in end.model.parameters()), trainable, list(calls))
            calls.clear()
            return []

    cfg = config(run, steps=3).with_(task_end=Keep(), tasks=FORGET_SETS[:1], pools={RETAIN: REMAINING[:1]})
    handle = torch.nn.modules.module.register_module_forward_pre_hook(embedding_call)
    try:
        run_without_ray(cfg, tmp_path)
    finally:
        handle.remove()
    ((end, total, trainable, seen),) = ends
    if name == "rmu":  # RMU trains only down_proj of layers ℓ−2..ℓ (it restores requires_grad after the task)
        trainable = sum(layer.mlp.down_proj.weight.numel() for layer in end.model.model.layers[:2])
    if name == "gs_lora":
        trainable = sum(p.numel() for n, p in end.model.named_parameters() if "lora_" in n)
    expected = sum(2 * total * t + ((2 * total * t + 2 * trainable * t) if grad else 0) for t, grad in seen)
    frozen_calls = sum(1 for _, grad in seen if not grad)
    per_step = {"npo": 2, "rmu": 2, "undial": 2}.get(name, 1) + (3 if gu else 0)
    assert len(seen) == 3 * per_step  # the reference / frozen forward and GU's 3 per-sample passes are calls too
    assert frozen_calls == (3 if name in ("npo", "rmu", "undial") else 0)
    assert end.train_flops == pytest.approx(expected, rel=1e-12)


def test_dp2u_unlearns_from_the_dp_base_and_retrain_from_the_base():
    """DP2Unlearning fine-tunes the DP base, never the deployed target (which saw everything without noise)."""
    assert load_method_class(UNLEARNING["dp2u"]).start_from == "dp_base"
    assert load_method_class(UNLEARNING["retrain"]).start_from == "base"



@pytest.mark.parametrize("name", ["wga", "satimp", "ce_u", "undial"])
def test_the_reweighted_and_cross_entropy_methods_lower_the_forget_answers_likelihood_on_the_loop(name, tmp_path):
    # The ascent alone (no retain term): on this untrained model a retain NLL would lift shared tokens.
    cfg = config(unlearning_run(name, retain_weight=0.0, **({"forget_weight": 1.0} if name == "satimp" else {})),
                 steps=6, lr=1e-2)  # (undial's teacher is the model as the request began: the target)
    run_without_ray(cfg, tmp_path)
    before, after = build_model(TARGET), build_model(TARGET)
    after.load_state_dict(cfg.task_end.weights[0])
    old, _ = log_likelihoods(before, FORGET_SETS[0])
    new, _ = log_likelihoods(after, FORGET_SETS[0])
    assert (new < old).all(), (name, old, new)



def test_idk_nll_teaches_i_dont_know_for_the_forget_questions_and_keeps_the_retain_nll(tmp_path):
    method = unlearning_run("idk_nll").build()
    ctx = context()
    ctx.pools["idk"] = IDK_ANSWERS
    batch = method.batch(ctx, 0)
    questions = ctx.task_batch(0)
    assert [item.prompt for item in batch.parts["idk"]] == [q.prompt for q in questions]  # the forget questions
    assert {item.answer for item in batch.parts["idk"]} <= {a.answer for a in IDK_ANSWERS}  # answered "I don't know"
    assert not any(item.answer == q.answer for item, q in zip(batch.parts["idk"], questions))
    assert len(batch.parts[RETAIN]) == 4  # α = 1: the retain NLL stays
    cfg = config(unlearning_run("idk_nll", retain_weight=0.0), steps=6, lr=1e-2)
    run_without_ray(cfg, tmp_path)
    after = build_model(TARGET)
    after.load_state_dict(cfg.task_end.weights[0])
    pairs = [TokenizedQA(q.prompt, a.answer) for q in FORGET_SETS[0] for a in IDK_ANSWERS]
    old, _ = log_likelihoods(build_model(TARGET), pairs)
    new, _ = log_likelihoods(after, pairs)
    assert (new > old).all()  # descent on the refusals, not ascent



def test_undial_distils_the_frozen_start_with_the_true_tokens_logit_lowered_by_beta():
    """open-unlearning's compute_undial_loss: CE(softmax(z_teacher − β·onehot(y)), student) at every position."""
    method = unlearning_run("undial", beta=3.0).build()
    ctx = context()
    method.before_task(ctx)
    student = build_model(TARGET)
    nudge(student, seed=4)  # the student has moved away from the request's start
    batch = StepBatch({FORGET: FORGET_SETS[0][:3]})
    inputs = collate_qa(FORGET_SETS[0][:3], pad_id=PAD, eos_id=EOS)
    outputs = student(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    losses, mask = token_losses(outputs.logits, inputs["labels"])
    micro = MicroBatch(inputs=inputs, part_of_row=[FORGET] * 3, token_losses=losses, token_mask=mask,
                       step_batch=batch, world_size=1, accumulation=1)
    loss = method.forget_loss(ctx, student, micro, outputs)
    with torch.no_grad():
        teacher = method.teacher.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    expected = []
    for row in range(3):
        terms = []
        for t in range(inputs["input_ids"].shape[1] - 1):
            z = teacher[row, t].clone()
            label = int(inputs["labels"][row, t + 1])
            if label != -100:
                z[label] -= 3.0  # lowered, never raised
            q = z.softmax(-1)
            terms.append(float(-(q * outputs.logits[row, t].detach().log_softmax(-1)).sum()))
        expected.append(sum(terms) / len(terms))  # every position, prompt and padding included
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in method.teacher.model.parameters())  # the teacher is frozen
    assert load_method_class(UNLEARNING["undial"]).full_logits



def test_idk_dpo_starts_at_two_over_beta_ln_2_and_prefers_i_dont_know_to_the_true_answer(tmp_path):
    """open-unlearning's compute_dpo_loss with chosen = idk, rejected = the true answer, summed log-likelihoods."""
    method = unlearning_run("idk_dpo", retain_weight=0.0).build()
    ctx = context()
    ctx.pools["idk"] = IDK_ANSWERS
    method.before_task(ctx)
    batch = method.batch(ctx, 0)
    assert list(batch.parts) == [FORGET]
    loss = method.loss(ctx, ctx.model, micro_batch(ctx.model, batch), None)
    assert loss.item() == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)  # π = π_ref: every margin is 0
    cfg = config(unlearning_run("idk_dpo", retain_weight=0.0), steps=6, lr=1e-2)
    run_without_ray(cfg, tmp_path)
    after = build_model(TARGET)
    after.load_state_dict(cfg.task_end.weights[0])
    refusals = [TokenizedQA(q.prompt, a.answer) for q in FORGET_SETS[0] for a in IDK_ANSWERS]
    (old_idk, _), (new_idk, _) = log_likelihoods(build_model(TARGET), refusals), log_likelihoods(after, refusals)
    (old_true, _), (new_true, _) = log_likelihoods(build_model(TARGET), FORGET_SETS[0]), log_likelihoods(after, FORGET_SETS[0])
    assert new_idk.mean() > old_idk.mean() and new_true.mean() < old_true.mean()  # chosen up, rejected down


def test_retrain_with_a_seed_offset_starts_from_another_init_and_draws_other_retain_batches():
    """seed_offset 0 is the retain model's recipe (init and batches); another offset changes both."""
    from palimpsest.unlearn.retrain import Retrain

    base = build_model(BASE).state_dict()
    for offset, same in ((0, True), (1, False)):
        ctx = context()
        method = Retrain(seed_offset=offset)
        method.before_task(ctx)
        weights = ctx.model.state_dict()
        assert all(torch.equal(weights[k], base[k]) for k in base) == same, offset
        batches = [[item.answer for item in method.batch(ctx, step).parts[RETAIN]] for step in range(3)]
        assert (batches == [[i.answer for i in ctx.pool_batch(RETAIN, step)] for step in range(3)]) == same, offset
