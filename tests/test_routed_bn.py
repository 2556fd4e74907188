"""Routed (split) BatchNorm: conversion, routes, the split pass, export."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atzoo.errors import AtzooError
from atzoo.models import create_model
from atzoo.models.routed_bn import (
    RoutedBatchNorm,
    bn_route,
    convert_to_routed_bn,
    export_route,
    get_route,
    has_routed_bn,
    route_names,
    set_route,
)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _bn_stats(model: nn.Module, route: str) -> dict[str, torch.Tensor]:
    """Running statistics and affine weights of one branch of every routed BN."""
    return {
        f"{name}.{key}": value.detach().clone()
        for name, module in model.named_modules() if isinstance(module, RoutedBatchNorm)
        for key, value in module.branches[route].state_dict().items()
    }


def _randomise_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.fixture(params=["small_cnn", "resnet18", "mlp"])
def setup(request: pytest.FixtureRequest) -> tuple[str, nn.Module, torch.Tensor, torch.Tensor]:
    """(name, routed model in train mode, adversarial-like batch, clean batch)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if request.param == "mlp":
        model, shape = _mlp(), (4, 6)
    else:
        model, shape = create_model(request.param, 10), (4, 3, 8, 8)
    _randomise_bn(model, seed=2)
    x_adv, x_clean = torch.rand(*shape, generator=g), torch.rand(*shape, generator=g)
    return request.param, convert_to_routed_bn(model), x_adv, x_clean


def test_conversion_copies_weights_and_statistics_into_every_branch() -> None:
    model = create_model("small_cnn", 10).eval()
    _randomise_bn(model, seed=3)
    x = torch.rand(3, 3, 8, 8)
    before = {n: m.state_dict() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    with torch.no_grad():
        expected = model(x)
    assert not has_routed_bn(model) and get_route(model) is None
    convert_to_routed_bn(model)
    routed = {n: m for n, m in model.named_modules() if isinstance(m, RoutedBatchNorm)}
    assert sorted(routed) == sorted(before) and has_routed_bn(model)
    assert get_route(model) == "adv" and route_names(model) == ("adv", "clean")
    for name, module in routed.items():
        assert not module.training  # keeps the mode of the BN it replaced
        for route in ("adv", "clean"):
            for key, value in before[name].items():
                torch.testing.assert_close(module.branches[route].state_dict()[key], value, rtol=0, atol=0)
        assert module.branches["adv"].weight is not module.branches["clean"].weight
    for route in ("adv", "clean"):
        with torch.no_grad(), bn_route(model, route):
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    convert_to_routed_bn(model)  # converting again changes nothing
    assert not any(isinstance(m, RoutedBatchNorm) for r in routed.values() for m in r.branches.modules())


def test_a_route_updates_only_its_own_branch(setup) -> None:
    _, model, x_adv, x_clean = setup
    adv0, clean0 = _bn_stats(model, "adv"), _bn_stats(model, "clean")
    with bn_route(model, "clean"):
        model(x_clean)
    assert all(torch.equal(v, adv0[k]) for k, v in _bn_stats(model, "adv").items())
    changed = [k for k, v in _bn_stats(model, "clean").items() if "running_mean" in k and not torch.equal(v, clean0[k])]
    assert changed
    clean1 = _bn_stats(model, "clean")
    with bn_route(model, "adv"):
        model(x_adv)
    assert all(torch.equal(v, clean1[k]) for k, v in _bn_stats(model, "clean").items())
    assert any(not torch.equal(v, adv0[k]) for k, v in _bn_stats(model, "adv").items() if "running_mean" in k)


@pytest.mark.parametrize("train", [True, False])
def test_split_route_equals_two_routed_passes(setup, train: bool) -> None:
    _, model, x_adv, x_clean = setup
    model.train(train)
    twin = copy.deepcopy(model)
    y = torch.tensor([0, 1, 2, 1])
    with bn_route(model, "split"):
        logits = model(torch.cat([x_adv, x_clean]))
    (F.cross_entropy(logits[:4], y) + F.cross_entropy(logits[4:], y)).backward()
    with bn_route(twin, "adv"):
        logits_adv = twin(x_adv)
    with bn_route(twin, "clean"):
        logits_clean = twin(x_clean)
    (F.cross_entropy(logits_adv, y) + F.cross_entropy(logits_clean, y)).backward()
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, torch.cat([logits_adv, logits_clean]), **tol)
    for route in ("adv", "clean"):
        split_stats, separate_stats = _bn_stats(model, route), _bn_stats(twin, route)
        for key, value in split_stats.items():
            torch.testing.assert_close(value, separate_stats[key], **tol)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **tol, msg=name)


def test_split_needs_equal_halves() -> None:
    model = convert_to_routed_bn(_mlp())
    with bn_route(model, "split"), pytest.raises(AtzooError, match="batch size 3"):
        model(torch.rand(3, 6))


def test_bn_route_restores_each_module_and_survives_errors() -> None:
    model = convert_to_routed_bn(_mlp())
    other = convert_to_routed_bn(_mlp())
    with bn_route(model, "clean"):
        assert get_route(model) == "clean" and get_route(other) == "adv"  # route is per model
        with bn_route(model, "split"):
            assert get_route(model) == "split"
        assert get_route(model) == "clean"
        with pytest.raises(ZeroDivisionError), bn_route(model, "adv"):
            _ = 1 / 0
        assert get_route(model) == "clean"
    assert get_route(model) == "adv"
    with bn_route(model, None):
        assert get_route(model) == "adv"
    set_route(model, "clean")
    assert all(m.route == "clean" for m in model.modules() if isinstance(m, RoutedBatchNorm))


def test_invalid_routes_are_user_errors() -> None:
    model = convert_to_routed_bn(_mlp())
    with pytest.raises(AtzooError, match="unknown BN route 'cln'. Valid choices: adv, clean, split"):
        set_route(model, "cln")
    plain = _mlp()
    with pytest.raises(AtzooError, match="needs routed BatchNorm"):
        set_route(plain, "split")
    with bn_route(plain, "clean"):  # a plain model's BNs serve every named route
        assert get_route(plain) is None
    with pytest.raises(AtzooError, match="cannot export BN route 'split'"):
        export_route(model, "split")
    with pytest.raises(AtzooError, match="other than 'split'"):
        convert_to_routed_bn(_mlp(), routes=("adv", "split"))
    with pytest.raises(AtzooError, match="already has routed BN"):
        convert_to_routed_bn(model, routes=("a", "b"))


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_exported_route_is_a_plain_model_with_identical_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = convert_to_routed_bn(create_model(name, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    y = torch.tensor([0, 1, 2, 3])
    for step in range(2):  # make the two branches differ in weights and statistics
        with bn_route(model, "split"):
            logits = model(torch.rand(8, 3, 8, 8))
        loss = F.cross_entropy(logits[:4], y) + 2 * F.cross_entropy(logits[4:], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x = torch.rand(5, 3, 8, 8)
    fresh = create_model(name, 10).eval()
    outputs = {}
    for route in ("adv", "clean"):
        plain = export_route(model, route)
        assert not has_routed_bn(plain) and get_route(model) == "adv"
        fresh.load_state_dict(plain.state_dict(), strict=True)
        with torch.no_grad(), bn_route(model, route):
            expected = model(x)
            torch.testing.assert_close(plain(x), expected, rtol=0, atol=1e-6)
            torch.testing.assert_close(fresh(x), expected, rtol=0, atol=1e-6)
        outputs[route] = expected
    assert not torch.allclose(outputs["adv"], outputs["clean"])
    assert has_routed_bn(model)  # exporting leaves the training model as it was


def test_sync_batchnorm_and_bare_bn_convert_and_export() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4))
    convert_to_routed_bn(net)
    assert isinstance(net[1], RoutedBatchNorm) and isinstance(net[1].branches["clean"], nn.SyncBatchNorm)
    exported = export_route(net, "adv")
    assert type(exported[1]) is nn.SyncBatchNorm
    nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4)).load_state_dict(exported.state_dict(), strict=True)
    bare = convert_to_routed_bn(nn.BatchNorm1d(5))
    assert isinstance(bare, RoutedBatchNorm) and isinstance(export_route(bare), nn.BatchNorm1d)


def test_shared_bn_stays_shared() -> None:
    bn = nn.BatchNorm1d(4)
    net = nn.Sequential(bn, nn.ReLU(), bn)
    convert_to_routed_bn(net)
    assert net[0] is net[2] and isinstance(net[0], RoutedBatchNorm)
    plain = export_route(net)
    assert plain[0] is plain[2] and isinstance(plain[0], nn.BatchNorm1d)
