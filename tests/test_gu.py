"""GU's projection: the step is orthogonal to every retain gradient used and spares the retain loss."""

from __future__ import annotations

import torch

from palimpsest.train.batching import collate_qa, token_losses
from palimpsest.train.config import MethodRun
from palimpsest.unlearn.base import RETAIN
from palimpsest.unlearn.gu import orthonormal_basis, project_out, wrap

from synthetic import EOS, PAD
from test_unlearn_methods import context, micro_batch, unlearning_run


def test_gram_schmidt_twice_gives_an_orthonormal_basis_and_drops_dependent_vectors():
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(5, 200, generator=generator, dtype=torch.float64)
    # Nearly parallel vectors are where one pass loses orthogonality.
    vectors[1] = vectors[0] + 1e-4 * vectors[1]
    vectors = torch.cat([vectors, (vectors[2] + vectors[3]).unsqueeze(0)])  # in the span: dropped
    basis = orthonormal_basis(vectors)
    assert basis.shape == (5, 200)
    assert torch.allclose(basis @ basis.T, torch.eye(5, dtype=torch.float64), atol=1e-10)
    g = torch.randn(200, generator=generator, dtype=torch.float64)
    projected = project_out(g, basis)
    assert (vectors @ projected).abs().max() < 1e-9 * vectors.norm(dim=1).max() * g.norm()


def test_the_second_pass_is_what_restores_orthogonality_in_float32():
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(5, 2000, generator=generator)
    vectors[1] = vectors[0] + 1e-3 * vectors[1]
    vectors[2] = vectors[0] + 1e-3 * vectors[2]
    error = {p: (lambda q: (q @ q.T - torch.eye(len(q))).abs().max().item())(orthonormal_basis(vectors, passes=p))
             for p in (1, 2)}
    assert error[2] < 1e-6 < error[1]


def _flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double() for p in model.parameters()])


def _retain_loss(model, items) -> float:
    inputs = collate_qa(items, pad_id=PAD, eos_id=EOS)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    losses, mask = token_losses(logits, inputs["labels"])
    return float(((losses.sum(1) / mask.sum(1))).mean())


def _gradients(ctx, method, step: int = 0):
    """The forget gradient as the loop leaves it in .grad, then GU's step gradient from after_backward."""
    method.before_task(ctx)
    batch = method.batch(ctx, step)
    ctx.model.zero_grad()
    method.loss(ctx, ctx.model, micro_batch(ctx.model, batch), None).backward()
    unprojected = _flat_grad(ctx.model)
    method.after_backward(ctx)
    return unprojected, _flat_grad(ctx.model)


def test_the_projected_step_is_orthogonal_to_every_retain_gradient_and_spares_the_retain_loss():
    ctx = context()
    gu = wrap(unlearning_run("grad_ascent"), samples=6).build()
    assert set(gu.batch(ctx, 0).parts) == {"forget"}  # GU's own retain samples replace a retain part
    unprojected, step = _gradients(ctx, gu)
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    retain = gu.retain_gradients(ctx, params)
    assert retain.shape[0] == 6
    cosines = (retain @ step) / (retain.norm(dim=1) * step.norm())
    assert cosines.abs().max() < 1e-5
    assert gu.progress()["gu_max_abs_cos"] < 1e-5
    before = (retain @ unprojected) / (retain.norm(dim=1) * unprojected.norm())
    assert before.abs().max() > 1e-2  # the forget gradient did point along retain directions

    # A small SGD step along each: the projected one raises the retain loss (on the samples used) less.
    items = ctx.pool_batch(RETAIN, 0, 6)
    start = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    base_loss = _retain_loss(ctx.model, items)
    rises = []
    for direction in (unprojected, step):
        ctx.model.load_state_dict(start)
        offset = 0
        with torch.no_grad():
            for p in params:
                p -= 1e-3 * direction[offset : offset + p.numel()].view_as(p).to(p.dtype) / direction.norm()
                offset += p.numel()
        rises.append(_retain_loss(ctx.model, items) - base_loss)
    assert rises[1] < rises[0]
    assert abs(rises[1]) < 0.2 * abs(rises[0])


def test_with_a_retain_term_gu_adds_the_mean_retain_gradient_to_the_projected_forget_gradient():
    ctx = context()
    gu = wrap(unlearning_run("grad_diff", retain_weight=2.0), samples=4).build()
    unprojected, step = _gradients(ctx, gu)
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    retain = gu.retain_gradients(ctx, params)
    expected = project_out(unprojected, orthonormal_basis(retain)) + 2.0 * retain.mean(dim=0)
    assert torch.allclose(step, expected, rtol=1e-5, atol=1e-9)


def test_gu_wraps_by_name_and_keeps_the_inner_schedule():
    inner = unlearning_run("npo")
    wrapped = wrap(inner, samples=3)
    assert wrapped.name == "npo+gu" and wrapped.params["samples"] == 3
    assert isinstance(wrapped, MethodRun) and wrapped.optimisation is inner.optimisation
    state = wrapped.build().state_dict()
    assert "inner" in state
