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
