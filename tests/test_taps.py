"""Feature taps: resolution, default tap sets, pooling, hook removal, batch-size independence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atzoo.models import create_model, default_tap_patterns
from atzoo.models.routed_bn import bn_route, convert_to_routed_bn
from atzoo.models.taps import FeatureTaps, TapError, resolve_tap_names
from atzoo.registry import MODELS

# Channels of each default tap, in model order (first blocks of the last stage see the
# narrower input of that stage).
DEFAULT_TAP_CHANNELS = {
    "resnet18": [512] * 4,
    "preact_resnet18": [256, 512, 512, 512],
    "wrn34_10": [320] + [640] * 9 + [640],
    "wrn28_10": [320] + [640] * 7 + [640],
    "wrn28_10_silu": [320] + [640] * 7 + [640],
    "small_cnn": [128],
    "timm:resnet18": [512],
}


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


#: Registered models too large to build in a test; their taps follow a smaller sibling's pattern.
TOO_LARGE_TO_BUILD = {"wrn70_16_silu": "267M parameters; the same layout as wrn28_10_silu, which is built"}


def test_every_registered_model_has_a_default_tap_expectation() -> None:
    assert set(MODELS.names()) <= set(DEFAULT_TAP_CHANNELS) | set(TOO_LARGE_TO_BUILD)


@pytest.mark.parametrize("name", sorted(DEFAULT_TAP_CHANNELS))
def test_default_tap_sets_have_the_right_shapes(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    size = 32 if name.startswith("timm:") else 8
    x = torch.rand(2, 3, size, size)
    with torch.no_grad(), FeatureTaps(model, default_tap_patterns(name)) as taps:
        logits = model(x)
    assert logits.shape == (2, 10)
    assert [f.shape for f in taps.as_list()] == [(2, c) for c in DEFAULT_TAP_CHANNELS[name]]
    assert all(torch.isfinite(f).all() for f in taps.as_list())
    if not name.endswith("_silu"):  # ReLU outputs; a SiLU network's activations dip below 0
        assert all((f >= 0).all() for f in taps.as_list())
    if "pool" in taps.names:  # the pooled output tap is the penultimate feature vector, through
        with torch.no_grad():  # the tap's ReLU (a no-op after a ReLU network's last activation)
            torch.testing.assert_close(taps.features["pool"], torch.relu(model.forward_features(x)))
    assert _hooks_left(model) == 0


def test_resolution_by_exact_name_and_glob_in_model_order() -> None:
    model = create_model("resnet18", 10)
    names = resolve_tap_names(model, ["layer4.*relu*"])
    assert names == ["layer4.0.relu1", "layer4.0.relu2", "layer4.1.relu1", "layer4.1.relu2"]
    # Patterns may overlap and come in any order: each module once, in model order.
    assert resolve_tap_names(model, ["pool", "layer4.1.relu2", "layer4.1.*"])[-2:] == ["layer4.1.relu2", "pool"]
    assert resolve_tap_names(model, "layer1.0.relu1") == ["layer1.0.relu1"]
    assert len(resolve_tap_names(create_model("wrn34_10", 10), default_tap_patterns("wrn34_10"))) == 11


@pytest.mark.parametrize(
    ("pattern", "near"),
    [("layer4.*relu", "layer4.0.relu1"), ("layer5.1.relu2", "layer4.1.relu2"), ("block3.*relu*", "layer3.")],
)
def test_unmatched_pattern_is_a_clear_one_line_error(pattern: str, near: str) -> None:
    model = create_model("resnet18", 10)
    with pytest.raises(TapError) as info:
        FeatureTaps(model, ["pool", pattern])
    message = str(info.value)
    assert "\n" not in message and f"'{pattern}' matches no module of ResNet" in message
    assert near in message
    assert _hooks_left(model) == 0
    with pytest.raises(TapError, match="no feature-tap patterns"):
        resolve_tap_names(model, [])


def test_raw_and_pooled_features_and_gradients() -> None:
    torch.manual_seed(0)
    model = create_model("small_cnn", 10)
    x = torch.rand(3, 3, 8, 8)
    with FeatureTaps(model, ["bn3", "pool"], pooled=False) as raw:
        model(x)
    with FeatureTaps(model, ["bn3", "pool"]) as pooled:
        model(x)
    assert raw.features["bn3"].shape == (3, 128, 2, 2) and raw.features["pool"].shape == (3, 128)
    # Pooled = ReLU then global average (the ReLU matters for a pre-activation BN output).
    torch.testing.assert_close(pooled.features["bn3"], F.relu(raw.features["bn3"]).mean(dim=(2, 3)))
    torch.testing.assert_close(pooled.features["pool"], raw.features["pool"])
    assert (raw.features["bn3"] < 0).any()
    pooled.features["bn3"].sum().backward()  # features keep their graph (a loss is built on them)
    assert model.conv1.weight.grad is not None and model.fc.weight.grad is None


def test_hooks_are_removed_on_exit_even_after_an_error() -> None:
    model = create_model("resnet18", 10)
    with pytest.raises(ValueError), FeatureTaps(model, ["layer4.*relu*"]) as taps:
        assert _hooks_left(model) == 4
        raise ValueError("boom")
    assert _hooks_left(model) == 0
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 8, 8))
    assert taps.features == {}  # nothing recorded after exit


@pytest.mark.parametrize("name", ["resnet18", "small_cnn"])
def test_features_do_not_depend_on_batch_size(name: str) -> None:
    # The official AR-AT extractor mistakes a batch of two for a (tensor, bn_name) pair.
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    x = torch.rand(3, 3, 8, 8)
    per_size = {}
    with torch.no_grad(), FeatureTaps(model, default_tap_patterns(name)) as taps:
        for batch in (1, 2, 3):
            model(x[:batch])
            per_size[batch] = taps.as_list()
    for batch in (1, 2):
        for small, full in zip(per_size[batch], per_size[3]):
            assert small.shape[0] == batch
            torch.testing.assert_close(small, full[:batch], rtol=1e-5, atol=1e-6)


def test_taps_under_the_split_route_see_the_concatenated_batch() -> None:
    torch.manual_seed(0)
    model = convert_to_routed_bn(create_model("resnet18", 10))
    twin = convert_to_routed_bn(create_model("resnet18", 10))
    twin.load_state_dict(model.state_dict())
    x_adv, x_clean = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    patterns = default_tap_patterns("resnet18")
    with FeatureTaps(model, patterns) as taps, bn_route(model, "split"):
        model(torch.cat([x_adv, x_clean]))
    separate = {}
    with FeatureTaps(twin, patterns) as twin_taps:
        for route, x in (("adv", x_adv), ("clean", x_clean)):
            with bn_route(twin, route):
                twin(x)
            separate[route] = twin_taps.as_list()
    for i, feature in enumerate(taps.as_list()):
        assert feature.shape == (4, 512)
        expected = torch.cat([separate["adv"][i], separate["clean"][i]])
        torch.testing.assert_close(feature, expected, rtol=1e-5, atol=1e-5)


def test_tapping_a_module_without_tensor_output_is_an_error() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
            return x, "adv"

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pair(x)[0]

    with FeatureTaps(Net(), ["pair"]) as taps, pytest.raises(TapError, match="returns tuple"):
        taps.model(torch.rand(2, 3))


# --------------------------------------------------------------------------- AR-AT's official features


def _pooled_relu(t: torch.Tensor) -> torch.Tensor:
    return F.relu(t).mean(dim=(2, 3))


def _official_resnet18_features(model: nn.Module, x: torch.Tensor, bn=lambda m: m) -> list[torch.Tensor]:
    """By hand: per layer4 block, ReLU(bn1(conv1 h)) and ReLU(bn2(conv2 .)) taken *before* the
    shortcut add (futakw/AR-AT models/cifar_resnet_split_bn.py:72-77, the hook's ReLU in
    models/feature_extractor.py:225-236), each global-average-pooled."""
    h = model.relu(bn(model.bn1)(model.conv1(x)))
    h = model.layer3(model.layer2(model.layer1(h)))
    feats = []
    for block in model.layer4:
        a = bn(block.bn1)(block.conv1(h))
        b = bn(block.bn2)(block.conv2(F.relu(a)))
        feats += [_pooled_relu(a), _pooled_relu(b)]
        h = F.relu(b + block.shortcut(h))
    return feats


def test_resnet18_default_taps_are_the_official_scripts_features() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", 10).eval()
    x = torch.rand(3, 3, 8, 8, requires_grad=True)
    with FeatureTaps(model, default_tap_patterns("resnet18")) as taps:
        model(x)
    assert taps.names == ["layer4.0.bn1", "layer4.0.bn2", "layer4.1.bn1", "layer4.1.bn2"]
    expected = _official_resnet18_features(model, x)
    for got, want in zip(taps.as_list(), expected):
        torch.testing.assert_close(got, want)
    # The gradient through the taps is the hand computation's gradient too.
    (g_taps,) = torch.autograd.grad(sum(f.sum() for f in taps.as_list()), x)
    (g_hand,) = torch.autograd.grad(sum(f.sum() for f in expected), x)
    torch.testing.assert_close(g_taps, g_hand)


def test_resnet18_official_taps_under_split_bn_use_each_route() -> None:
    torch.manual_seed(0)
    model = convert_to_routed_bn(create_model("resnet18", 10)).eval()
    for route in ("adv", "clean"):
        for m in model.modules():  # give the two routes different affine parameters
            if hasattr(m, "branches"):
                nn.init.normal_(m.branches[route].weight, 1.0, 0.3)
        x = torch.rand(2, 3, 8, 8)
        with torch.no_grad(), bn_route(model, route), FeatureTaps(model, default_tap_patterns("resnet18")) as taps:
            model(x)
            expected = _official_resnet18_features(model, x, bn=lambda m: m.branches[route])
        for got, want in zip(taps.as_list(), expected):
            torch.testing.assert_close(got, want)


def test_block_output_reading_is_a_named_tap_set_and_differs_after_the_add() -> None:
    from atzoo.models import expand_tap_patterns, tap_sets

    assert tap_sets("resnet18")["block_output"] == ["layer4.*relu*"]
    assert expand_tap_patterns("resnet18", ["block_output"]) == ["layer4.*relu*"]
    assert expand_tap_patterns("resnet18", ["default"]) == default_tap_patterns("resnet18")
    torch.manual_seed(0)
    model = create_model("resnet18", 10).eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad(), FeatureTaps(model, expand_tap_patterns("resnet18", ["block_output"])) as taps:
        model(x)
        official = _official_resnet18_features(model, x)
    assert taps.names == ["layer4.0.relu1", "layer4.0.relu2", "layer4.1.relu1", "layer4.1.relu2"]
    got = taps.as_list()
    torch.testing.assert_close(got[0], official[0])  # relu1 is ReLU(bn1): the same feature
    assert not torch.allclose(got[1], official[1])  # relu2 is the block output, after the add
    torch.testing.assert_close(got[3], model.forward_features(x))  # the last one is the penultimate


def test_raw_bn2_tap_keeps_the_map_before_the_in_place_add() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", 10).eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad(), FeatureTaps(model, ["layer4.0.bn2"], pooled=False) as taps:
        model(x)
        block = model.layer4[0]
        h = model.layer3(model.layer2(model.layer1(model.relu(model.bn1(model.conv1(x))))))
        expected = block.bn2(block.conv2(block.relu1(block.bn1(block.conv1(h)))))
    torch.testing.assert_close(taps.features["layer4.0.bn2"], expected)


def test_wrn34_10_default_taps_match_the_official_scripts() -> None:
    """scripts/ARAT/cifar10_wrn_34_10.sh:28: block3.layer.{0..4}.relu{1,2} and avgpool (11 features)."""
    with torch.device("meta"):
        model = create_model("wrn34_10", 10)
    names = resolve_tap_names(model, default_tap_patterns("wrn34_10"))
    official = [f"block3.layer.{i}.relu{j}" for i in range(5) for j in (1, 2)] + ["avgpool"]
    assert names == official[:-1] + ["pool"]  # atzoo's pooled output module is named pool
