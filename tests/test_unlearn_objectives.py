"""NPO and SimNPO on hand cases: values, the gradient's weight, and the variants they must not be."""

from __future__ import annotations

import math

import pytest
import torch

from palimpsest.unlearn.objectives import npo_loss, simnpo_loss


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_npo_on_a_hand_case_with_a_known_reference_log_probability():
    logp = torch.tensor([-2.0], requires_grad=True)
    loss = npo_loss(logp, torch.tensor([-1.0]), beta=0.5)
    # log ratio −1: −(2/0.5)·log σ(0.5)
    assert loss.item() == pytest.approx(-4 * math.log(sigmoid(0.5)))
    loss.backward()
    # dL/dlogp = 2σ(β·log ratio) = 2σ(−0.5): gradient ascent's weight 1, shrunk as the model leaves the reference
    assert logp.grad.item() == pytest.approx(2 * sigmoid(-0.5))


def test_npo_at_the_reference_is_gradient_ascent_with_weight_one():
    logp = torch.tensor([-3.0, -0.5], requires_grad=True)
    npo_loss(logp, logp.detach().clone(), beta=0.1).backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.5, 0.5]))  # mean over 2 items, weight 1 each
    with pytest.raises(ValueError):
        npo_loss(logp, logp.detach(), beta=0.0)


def test_simnpo_is_length_normalised_reference_free_with_a_margin():
    logp, lengths = torch.tensor([-6.0]), torch.tensor([3])
    # −(β/|y|)·log π = 4 with β = 2: −(2/2)·log σ(4); without the length normalisation it would be −log σ(12)
    assert simnpo_loss(logp, lengths, beta=2.0).item() == pytest.approx(-math.log(sigmoid(4.0)))
    assert simnpo_loss(logp, lengths, beta=2.0, gamma=1.0).item() == pytest.approx(-math.log(sigmoid(3.0)))
    longer = simnpo_loss(torch.tensor([-12.0]), torch.tensor([6]), beta=2.0)
    assert longer.item() == pytest.approx(simnpo_loss(logp, lengths, beta=2.0).item())  # same per-token likelihood


def test_gs_lora_pushes_the_forget_nll_up_to_its_bound_and_no_further():
    """β·ReLU(BND − NLL): positive below the bound, zero above it (never ReLU(NLL − BND))."""
    from palimpsest.train.batching import TokenizedQA
    from palimpsest.train.hooks import MicroBatch, StepBatch
    from palimpsest.unlearn.base import FORGET
    from palimpsest.unlearn.gs_lora import GSLoRA

    method = GSLoRA(r=4, lora_alpha=16.0, target_modules=["gate_proj"], beta=0.5, bound=3.0, group_weight=0.0,
                    prox=False)
    items = [TokenizedQA((1, 5), (7,)), TokenizedQA((1, 6), (8, 9))]  # 2 + 3 labelled tokens (answer + eos)
    mask = torch.tensor([[True, True, False], [True, True, True]])

    def loss_at(per_token: float) -> float:
        micro = MicroBatch(inputs={}, part_of_row=[FORGET, FORGET], token_losses=mask.float() * per_token,
                           token_mask=mask, step_batch=StepBatch({FORGET: items}), world_size=1, accumulation=1)
        return method.forget_loss(None, None, micro, None).item()

    assert loss_at(1.0) == pytest.approx(0.5 * (3.0 - 1.0))  # mean NLL 1 < BND 3
    assert loss_at(4.0) == 0.0  # already past the bound: nothing more to push


def test_gs_lora_group_norm_is_the_l2_norm_of_the_whole_group_not_its_square():
    from palimpsest.unlearn.gs_lora import group_norm

    assert group_norm([torch.tensor([3.0]), torch.tensor([[4.0]])]).item() == pytest.approx(5.0)


def test_rmu_control_vector_is_a_unit_uniform_direction_scaled_by_c():
    from palimpsest.unlearn.rmu import control_vector

    vector = control_vector(64, seed=3, coeff=6.5)
    assert vector.norm().item() == pytest.approx(6.5, rel=1e-6)  # unnormalised it would be ~6.5·√(64/3)
    assert (vector >= 0).all() and torch.equal(vector, control_vector(64, seed=3, coeff=6.5))
    assert not torch.equal(vector, control_vector(64, seed=4, coeff=6.5))


def _forget_micro(token_losses: torch.Tensor, mask: torch.Tensor, answers: list[int], **extra):
    from palimpsest.train.batching import TokenizedQA
    from palimpsest.train.hooks import MicroBatch, StepBatch
    from palimpsest.unlearn.base import FORGET

    items = [TokenizedQA((1, 5), tuple(range(7, 7 + n))) for n in answers]  # n answer tokens + eos each
    return MicroBatch(inputs=extra.pop("inputs", {}), part_of_row=[FORGET] * len(items), token_losses=token_losses,
                      token_mask=mask, step_batch=StepBatch({FORGET: items}), world_size=1, accumulation=1)


def _method(name: str, **params):
    from palimpsest.catalog import methods_of

    info = methods_of("unlearning")[name]
    return info.resolve(params), info


def test_wga_ascends_each_token_by_its_detached_probability_to_the_beta():
    """open-unlearning's compute_wga_loss: −mean_t[sg(p_t^β)·NLL_t]; the gradient per token is −p_t^β / N."""
    from palimpsest.train.methods import load_method_class

    params, info = _method("wga", beta=2.0)
    assert params == {"beta": 2.0, "forget_weight": 1.0, "retain_weight": 1.0}
    method = load_method_class(info)(**params)
    nll = torch.tensor([[0.5, 1.0, 0.0], [0.2, 0.3, 2.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])  # 2 + 3 answer tokens (answers of 1 and 2 + eos)
    loss = method.forget_loss(None, None, _forget_micro(nll, mask, [1, 2]), None)
    p = torch.exp(-nll.detach())
    expected = -(p**2 * nll.detach())[mask].sum() / 5
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    # Detached weight: d/dNLL = −p^β / N. Differentiating through it would give −p^β(1 − β·NLL) / N.
    torch.testing.assert_close(nll.grad[mask], (-(p**2) / 5)[mask])
    assert nll.grad[0, 2] == 0


def test_satimp_weights_by_p_to_beta1_times_one_minus_p_to_beta2_with_the_yamls_weights():
    from palimpsest.train.methods import load_method_class

    params, info = _method("satimp")
    assert params == {"beta1": 5.0, "beta2": 1.0, "forget_weight": 0.1, "retain_weight": 1.0}  # the yaml that runs
    method = load_method_class(info)(**params)
    nll = torch.full((1, 2), math.log(2.0), requires_grad=True)  # p = 0.5 on both tokens
    loss = method.forget_loss(None, None, _forget_micro(nll, torch.ones(1, 2, dtype=torch.bool), [1]), None)
    weight = 0.5**5 * 0.5  # 1/64; swapped powers would give 0.5 · 0.5^5 too, so check an asymmetric p as well
    assert loss.item() == pytest.approx(-0.1 * weight * math.log(2.0))
    nll2 = torch.tensor([[-math.log(0.8)]], requires_grad=True)
    loss2 = method.forget_loss(None, None, _forget_micro(nll2, torch.ones(1, 1, dtype=torch.bool), [0]), None)
    assert loss2.item() == pytest.approx(-0.1 * 0.8**5 * 0.2 * -math.log(0.8))  # p^5(1−p), not p(1−p)^5
    loss2.backward()
    assert nll2.grad.item() == pytest.approx(-0.1 * 0.8**5 * 0.2)  # the weight is held fixed


def test_ce_u_pulls_to_the_models_own_distribution_without_the_true_token_and_skips_the_first():
    """open-unlearning's ceu.py: target q = sg(softmax(z with z_y = −inf)), loss = mean CE(q, p); grad (p − q)/N."""
    from types import SimpleNamespace

    from palimpsest.train.methods import load_method_class

    params, info = _method("ce_u")
    assert params == {"ignore_first": 1, "retain_weight": 0.0}
    method = load_method_class(info)(**params)
    torch.manual_seed(0)
    vocab = 6
    # One row: prompt (bos, 5), answer (3, 4), eos 2 → labels at positions 1..3 predict 3, 4, 2.
    input_ids = torch.tensor([[1, 5, 3, 4, 2]])
    labels = torch.tensor([[-100, -100, 3, 4, 2]])
    logits = torch.randn(1, 5, vocab, requires_grad=True)
    mask = torch.tensor([[False, True, True, True]])  # token_losses positions 0..3 (the last logit predicts nothing)
    micro = _forget_micro(torch.zeros(1, 4), mask, [2], inputs={"input_ids": input_ids, "labels": labels})
    loss = method.forget_loss(None, None, micro, SimpleNamespace(logits=logits))
    # Positions 2 and 3 (predicting 4 and the eos); position 1 (the first answer token, 3) is left out.
    counted = 2 + 1 - 1  # the item's answer tokens and eos, less the first
    expected, grads = 0.0, {}
    for position, token in ((2, 4), (3, 2)):
        p = logits[0, position].detach().softmax(-1)
        q = p.clone()
        q[token] = 0
        q = q / q.sum()  # renormalised without the true token
        expected += float(-(q * p.log()).sum()) / counted
        grads[position] = p - q
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    for position, grad in grads.items():
        torch.testing.assert_close(logits.grad[0, position], grad / counted, rtol=1e-5, atol=1e-7)
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 4].abs().sum() == 0
