"""N-FGSM (de Jorge et al., NeurIPS 2022): noise of 2 eps, one FGSM step of eps at the noisy
point, no projection back to the eps-ball -- against a hand computation with the same noise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atzoo.attacks import noisy_fgsm
from atzoo.config import build_config
from atzoo.errors import ConfigError
from atzoo.methods import create_method

EPS = 8 / 255


def linear_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_noisy_fgsm_equals_the_hand_computation_and_is_not_projected() -> None:
    net = linear_net()
    torch.manual_seed(1)
    x, y = torch.rand(32, 1, 4, 4) * 0.6 + 0.2, torch.randint(0, 3, (32,))
    out = noisy_fgsm(net, x, y, eps=EPS, step_size=EPS, noise=2 * EPS, generator=torch.Generator().manual_seed(7))
    eta = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(7)) - 1) * 2 * EPS
    start = (x + eta).clamp(0, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(net(start), y), start)
    expected = (start.detach() + EPS * grad.sign()).clamp(0, 1)
    assert torch.allclose(out, expected, atol=1e-6)
    delta = (out - x).abs()
    assert delta.max() > 1.5 * EPS  # outside the eps-ball: no projection (the paper's default)
    assert delta.max() <= 3 * EPS + 1e-6 and out.min() >= 0 and out.max() <= 1
    clipped = noisy_fgsm(net, x, y, eps=EPS, step_size=EPS, noise=2 * EPS, clip=EPS)
    assert (clipped - x).abs().max() <= EPS + 1e-6  # the clipped ablation stays inside


def test_method_uses_the_paper_setting_and_refuses_bad_values() -> None:
    cfg = build_config(None, [], method={"name": "n_fgsm"})
    assert cfg.attack.step_size == pytest.approx(EPS) and cfg.attack.steps == 1
    assert cfg.optim.epochs == 30 and cfg.optim.lr == 0.2 and cfg.optim.schedule == "onecycle"
    m = create_method("n_fgsm", cfg)
    net = linear_net()
    x, y = torch.rand(64, 1, 4, 4) * 0.6 + 0.2, torch.randint(0, 3, (64,))
    x_adv = m.attack(net, nn.ModuleDict(), x, y)
    assert (x_adv - x).abs().max() > EPS  # method.clip null: unprojected
    for override, pattern in (("method.noise=-1", "method.noise"), ("method.clip=0", "method.clip"),
                              ("attack.steps=3", "single-step")):
        with pytest.raises(ConfigError, match=pattern):
            create_method("n_fgsm", build_config(None, [override], method={"name": "n_fgsm"}))
