"""GradAlign (Andriushchenko & Flammarion, NeurIPS 2020): the cosine against a hand computation,
the regulariser's weight gradient (double backpropagation) against central finite differences,
the FGSM attack's step and gradient reuse, and lam = 0 equal to plain FGSM training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atzoo.config import build_config
from atzoo.errors import ConfigError
from atzoo.methods import create_method
from atzoo.methods.grad_align import gradient_cosine, noisy_gradient

EPS = 8 / 255


def smooth_net() -> nn.Sequential:
    """Linear -> tanh -> Linear in float64: smooth, so finite differences are accurate."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def test_gradient_cosine_by_hand_and_zero_gradients_left_out() -> None:
    g1 = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]).view(3, 1, 1, 2)
    g2 = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [3.0, 1.0]]).view(3, 1, 1, 2)
    # example 0: cos 45 deg = 1/sqrt(2); example 1: -1; example 2 has a zero gradient and is left out
    assert float(gradient_cosine(g1, g2)) == pytest.approx((2 ** -0.5 - 1.0) / 2)
    assert float(gradient_cosine(torch.zeros(2, 3), torch.ones(2, 3))) == 1.0  # nothing to align: reg 0


def regulariser(net: nn.Module, x: torch.Tensor, y: torch.Tensor, g1: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # the same eta at every evaluation
    return 1.0 - gradient_cosine(g1, noisy_gradient(net, x, y, EPS))


def test_regulariser_weight_gradient_matches_finite_differences() -> None:
    """d/dW (1 - cos(g1, grad_x CE(f_W(x + eta)))) by double backprop equals a central difference."""
    net = smooth_net()
    torch.manual_seed(1)
    x = torch.rand(4, 1, 3, 4, dtype=torch.float64) * 0.8 + 0.1
    y = torch.tensor([0, 1, 2, 1])
    g1 = torch.randn(4, 1, 3, 4, dtype=torch.float64)  # a fixed (detached) first gradient
    weight = net[1].weight
    (analytic,) = torch.autograd.grad(regulariser(net, x, y, g1, seed=5), weight)
    assert analytic.abs().sum() > 0  # the second-order term is not silently dropped
    h = 1e-6
    for index in [(0, 0), (2, 7), (4, 11)]:
        with torch.no_grad():
            weight[index] += h
        up = float(regulariser(net, x, y, g1, seed=5).detach())
        with torch.no_grad():
            weight[index] -= 2 * h
        down = float(regulariser(net, x, y, g1, seed=5).detach())
        with torch.no_grad():
            weight[index] += h
        assert float(analytic[index]) == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-8)


def method(lam: float = 0.2):
    return create_method("grad_align", build_config(None, [f"method.lam={lam}"], method={"name": "grad_align"}))


def test_attack_is_fgsm_from_x_and_its_gradient_is_the_first_gradient() -> None:
    net = smooth_net().float()
    torch.manual_seed(2)
    x, y = torch.rand(4, 1, 3, 4) * 0.8 + 0.1, torch.tensor([0, 1, 2, 1])
    m = method()
    x_adv = m.attack(net, nn.ModuleDict(), x, y)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(net(leaf), y), leaf)
    assert torch.allclose(x_adv, (x + EPS * grad.sign()).clamp(0, 1), atol=1e-7)  # zero init, step eps
    assert torch.allclose(m._attack_grad, grad, atol=1e-7)
    out = m.compute_loss(net, nn.ModuleDict(), x, x_adv, y)
    assert set(out.parts) == {"ce_adv", "align"} and 0.0 <= float(out.parts["align"].detach()) <= 0.4
    assert m.is_regularizer("align") and not m.is_regularizer("ce_adv")


def test_lam_zero_is_plain_fgsm_training_and_bad_values_are_refused() -> None:
    net = smooth_net().float()
    x, y = torch.rand(4, 1, 3, 4), torch.tensor([0, 1, 2, 1])
    m = method(0.0)
    x_adv = m.attack(net, nn.ModuleDict(), x, y)
    out = m.compute_loss(net, nn.ModuleDict(), x, x_adv, y)
    assert set(out.parts) == {"ce_adv"}
    assert torch.allclose(out.parts["ce_adv"], F.cross_entropy(net(x_adv), y))
    with pytest.raises(ConfigError, match="method.lam"):
        method(-1.0)
    with pytest.raises(ConfigError, match="single-step"):
        create_method("grad_align", build_config(None, ["attack.steps=10"], method={"name": "grad_align"}))
