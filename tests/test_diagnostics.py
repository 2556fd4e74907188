"""The AR-AT paper's training diagnostics: gradient similarity and conflict, feature drift,
BN running-mean variance. Values are checked against hand computations, ranges are
checked on real methods, and the diagnostics must leave no trace on the training state.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from atzoo.config import build_config
from atzoo.eval.diagnostics import (
    conflict_fraction,
    epoch_diagnostics,
    feature_drift,
    gradient_cosine,
    step_diagnostics,
)
from atzoo.methods.base import create_method
from atzoo.models.routed_bn import RoutedBatchNorm, bn_route, convert_to_routed_bn, get_route
from atzoo.models.small_cnn import SmallCNN


def tiny(name: str, *overrides: str):
    extra = ["method.layers=relu2,relu3"] if name in ("arat", "inv_naive") else []
    cfg = build_config(None, [f"method.name={name}", "model.name=small_cnn", "model.in_channels=1", *extra, *overrides])
    method = create_method(name, cfg)
    torch.manual_seed(0)
    model = method.prepare_model(SmallCNN(3, 1, nn.Identity(), widths=(4, 8, 8))).train()
    return method, model, nn.ModuleDict(method.build_modules(model))


def batch(n: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return x, (x + 0.1 * torch.randn(x.shape, generator=g).sign()).clamp(0, 1), torch.randint(0, 3, (n,), generator=g)


def test_gradient_cosine_and_conflict_by_hand() -> None:
    g1 = torch.tensor([1.0, -2.0, 0.0, 3.0, 0.0])
    g2 = torch.tensor([2.0, 1.0, 5.0, -1.0, 0.0])
    assert gradient_cosine(g1, g2) == pytest.approx(-3.0 / (math.sqrt(14.0) * math.sqrt(31.0)), rel=1e-6)
    # entries with both nonzero: 0, 1, 3; opposite signs at 1 and 3
    assert conflict_fraction(g1, g2) == pytest.approx(2 / 3)
    assert gradient_cosine(g1, torch.zeros(5)) == 0.0 and conflict_fraction(g1, torch.zeros(5)) == 0.0
    assert gradient_cosine(g1, -2 * g1) == pytest.approx(-1.0) and conflict_fraction(g1, -g1) == 1.0


@pytest.mark.parametrize("name", ["arat", "inv_naive", "asym_trades"])
def test_step_diagnostics_ranges_and_no_side_effects(name: str) -> None:
    method, model, modules = tiny(name)
    x, x_adv, y = batch()
    params = [*model.parameters(), *modules.parameters()]
    for i, p in enumerate(params):  # some parameters hold a gradient already, others none
        p.grad = torch.full_like(p, 0.5) if i % 2 else None
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    state = copy.deepcopy(model.state_dict()), copy.deepcopy(modules.state_dict())
    route = get_route(model)
    rng = torch.get_rng_state()

    out = step_diagnostics(method, model, modules, x, x_adv, y)

    assert set(out) == {"diag/grad_cos", "diag/grad_conflict", "diag/feature_drift"}
    assert -1.0 <= out["diag/grad_cos"] <= 1.0 and 0.0 <= out["diag/grad_conflict"] <= 1.0
    assert out["diag/feature_drift"] > 0
    for p, g in zip(params, grads):
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    for now, before in ((model.state_dict(), state[0]), (modules.state_dict(), state[1])):
        for key, value in now.items():
            assert torch.equal(value, before[key]), key
    assert model.training and all(m.training for m in model.modules()) and get_route(model) == route
    assert torch.equal(torch.get_rng_state(), rng)


def _grad(loss: Tensor, params: list[nn.Parameter]) -> Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)])


def test_gradient_similarity_matches_an_independent_computation() -> None:
    method, model, modules = tiny("arat")
    x, x_adv, y = batch()
    reference = copy.deepcopy(model)
    out = method.compute_loss(reference, modules, x, x_adv, y)
    params = list(reference.parameters())
    g_ce = _grad(out.parts["ce_adv"] + out.parts["ce_clean"], params)
    g_align = _grad(out.parts["align/relu2"] + out.parts["align/relu3"], params)
    expected = torch.nn.functional.cosine_similarity(g_ce, g_align, dim=0).item()
    diag = step_diagnostics(method, model, modules, x, x_adv, y)
    assert diag["diag/grad_cos"] == pytest.approx(expected, abs=1e-5)


def test_method_without_regulariser_reports_drift_only() -> None:
    method, model, modules = tiny("at")
    x, x_adv, y = batch()
    assert set(step_diagnostics(method, model, modules, x, x_adv, y)) == {"diag/feature_drift"}


def test_feature_drift_is_mean_l2_distance_of_penultimate_features_on_adv_route() -> None:
    _, model, _ = tiny("arat")
    x, x_adv, _ = batch()
    with torch.no_grad(), bn_route(model, "adv"):
        model.eval()
        z, z_adv = model.forward_features(x), model.forward_features(x_adv)
        model.train()
    assert feature_drift(model, x, x_adv) == pytest.approx((z - z_adv).norm(dim=1).mean().item(), rel=1e-5)
    assert model.training


def _set_means(bns: list[nn.modules.batchnorm._BatchNorm], values: list[list[float]]) -> None:
    for bn, v in zip(bns, values):
        bn.running_mean = torch.tensor(v)


def test_epoch_diagnostics_plain_and_routed() -> None:
    model = nn.Sequential(nn.BatchNorm2d(2), nn.ReLU(), nn.BatchNorm2d(4))
    _set_means([model[0], model[2]], [[0.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    # variances across channels: 1 and 0 -> mean 0.5
    assert epoch_diagnostics(model) == {"diag/bn_mean_var": pytest.approx(0.5)}

    convert_to_routed_bn(model)
    routed = [m for m in model.modules() if isinstance(m, RoutedBatchNorm)]
    _set_means([r.branches["clean"] for r in routed], [[0.0, 4.0], [0.0, 0.0, 2.0, 2.0]])  # 4 and 1
    assert epoch_diagnostics(model) == {
        "diag/bn_mean_var/adv": pytest.approx(0.5), "diag/bn_mean_var/clean": pytest.approx(2.5)
    }
