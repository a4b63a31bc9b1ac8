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
