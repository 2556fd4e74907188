"""Architectures, create_model, penultimate features, predictor, `atzoo list models`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from atzoo.errors import ConfigError, RegistryError
from atzoo.models import (
    build_predictor,
    classify_features,
    create_model,
    default_tap_patterns,
    describe_model,
    parameter_count,
    penultimate_features,
)
from atzoo.models.layers import Normalize
from atzoo.registry import MODELS

# Figures from the papers' official code (10 classes).
PARAMS = {"resnet18": 11.17e6, "wrn34_10": 46.16e6, "wrn28_10": 36.48e6}
# Smallest inputs the stride pattern of each family allows: CPU-cheap forward/backward.
TINY_INPUT = {"small_cnn": (1, 8)}
TIMM_NAME = "timm:resnet18"
ALL_MODELS = MODELS.names() + [TIMM_NAME]


def _input(name: str, batch: int = 2) -> torch.Tensor:
    channels, size = TINY_INPUT.get(name, (3, 8 if not name.startswith("timm:") else 32))
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_matches_the_papers(name: str) -> None:
    count = parameter_count(name)
    assert abs(count - PARAMS[name]) / PARAMS[name] < 0.005, count
    with torch.device("meta"):  # the cached figure is the count of a real build
        assert sum(p.numel() for p in create_model(name, 10).parameters()) == count


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_every_parameter_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    x = _input(name)
    model = create_model(name, num_classes=10, in_channels=x.shape[1])
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 32), (3, 1)])
def test_small_cnn_takes_digits_and_cifar_sized_images(channels: int, size: int) -> None:
    model = create_model("small_cnn", 10, in_channels=channels)
    assert model(torch.rand(2, channels, size, size)).shape == (2, 10)


class _ReluCounter(TorchFunctionMode):
    """Counts every relu call, functional or through a module."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F.relu, torch.relu, torch.relu_, F.relu_):
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", MODELS.names())
def test_every_relu_site_is_its_own_module(name: str) -> None:
    x = _input(name)
    model = create_model(name, 10, x.shape[1]).eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    module_calls: list[nn.Module] = []
    for m in relus:
        m.register_forward_hook(lambda mod, i, o: module_calls.append(mod))
    with torch.no_grad(), _ReluCounter() as counter:
        model(x)
    # Each ReLU module runs exactly once (no reuse) and no relu runs outside a module.
    assert len(module_calls) == len(relus) == len({id(m) for m in module_calls})
    assert counter.calls == len(relus)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_penultimate_features_then_head_equals_forward(name: str) -> None:
    x = _input(name, batch=3)
    model = create_model(name, 10, x.shape[1]).eval()
    with torch.no_grad():
        z = penultimate_features(model, x)
        assert z.dim() == 2 and z.shape[0] == 3 and z.shape[1] == model.fc.in_features
        torch.testing.assert_close(classify_features(model, z), model(x), rtol=0, atol=1e-6)


def test_timm_model_keeps_timm_semantics() -> None:
    x = _input(TIMM_NAME)
    model = create_model(TIMM_NAME, num_classes=5, in_channels=3).eval()
    net = model.net
    assert net.fc.out_features == 5 and net.conv1.in_channels == 3
    assert not any(getattr(m, "inplace", False) for m in net.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=1e-6)
        # The helpers also accept a bare timm network.
        torch.testing.assert_close(classify_features(net, penultimate_features(net, x)), net(x), rtol=0, atol=1e-6)
    assert create_model("timm:resnet18", 10, in_channels=1).net.conv1.in_channels == 1


def test_unknown_models_are_reported_with_choices() -> None:
    with pytest.raises(RegistryError, match="Did you mean 'resnet18'.*Valid choices: .*wrn34_10"):
        create_model("resnet19", 10)
    with pytest.raises(RegistryError, match="unknown timm model 'resnet19'.*timm:resnet"):
        create_model("timm:resnet19", 10)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("small_cnn", 0)


def test_normalisation_is_an_optional_first_layer() -> None:
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    plain = create_model("small_cnn", 10).eval()
    normed = create_model("small_cnn", 10, normalize=True, mean=mean, std=std).eval()
    assert isinstance(normed.normalize, Normalize) and not isinstance(plain.normalize, Normalize)
    normed.load_state_dict({**plain.state_dict(), **{k: v for k, v in normed.state_dict().items() if "normalize" in k}})
    x = _input("small_cnn").expand(-1, 3, -1, -1)
    expected = plain((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(normed(x), expected)
    # The statistics are saved: a normalised state dict does not load into a plain model.
    with pytest.raises(RuntimeError, match="normalize.mean"):
        plain.load_state_dict(normed.state_dict())
    with pytest.raises(ConfigError, match="expected 3"):
        create_model("small_cnn", 10, normalize=True, mean=(0.5,), std=(0.5,))
    with pytest.raises(ConfigError, match="needs both mean and std"):
        create_model("resnet18", 10, normalize=True)


def test_default_tap_patterns() -> None:
    assert default_tap_patterns("resnet18") == ["layer4.0.bn1", "layer4.0.bn2", "layer4.1.bn1", "layer4.1.bn2"]
    assert default_tap_patterns("preact_resnet18") == ["layer4.*relu*"]
    assert default_tap_patterns("wrn34_10") == ["block3.*relu*", "pool"]
    assert default_tap_patterns("small_cnn") == ["pool"]
    assert default_tap_patterns("timm:resnet18") == ["pool"]
    with pytest.raises(RegistryError):
        default_tap_patterns("resnet")


def test_predictor_is_simsiam_bottleneck() -> None:
    torch.manual_seed(0)
    head = build_predictor(64)
    fc1, bn, relu, fc2 = head
    assert (fc1.in_features, fc1.out_features, fc1.bias) == (64, 16, None)
    assert isinstance(bn, nn.BatchNorm1d) and bn.num_features == 16 and isinstance(relu, nn.ReLU)
    assert (fc2.in_features, fc2.out_features) == (16, 64) and fc2.bias is not None
    z = torch.randn(4, 64)
    out = head(z)
    expected = fc2(F.relu(F.batch_norm(fc1(z), None, None, bn.weight, bn.bias, training=True)))
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    assert build_predictor(640, hidden=32)[0].out_features == 32
    with pytest.raises(ConfigError, match="predictor dim"):
        build_predictor(0)


def test_list_models_shows_parameter_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert describe_model("resnet18").endswith("11.17 M params at 10 classes")
    assert "46.16 M" in describe_model("wrn34_10") and "36.48 M" in describe_model("wrn28_10")
    from atzoo.cli import run

    assert run(["list", "models"]) == 0
    # Drop the table's box characters so wrapped cells read as one text.
    out = " ".join("".join(c for c in capsys.readouterr().out if not 0x2500 <= ord(c) <= 0x257F).split())
    for name in MODELS.names():
        assert name in out
    assert "11.17 M params" in out and "46.16 M params" in out and "timm:..." in out


def _out_of_place(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The residual blocks written with ``out + shortcut`` (the form before the in-place add)."""
    from atzoo.models.resnet import BasicBlock, PreActBlock

    if isinstance(block, BasicBlock):
        out = block.bn2(block.conv2(block.relu1(block.bn1(block.conv1(x)))))
        return block.relu2(out + block.shortcut(x))
    if isinstance(block, PreActBlock):
        out = block.relu1(block.bn1(x))
        shortcut = block.shortcut(out) if len(block.shortcut) else x
        return block.conv2(block.relu2(block.bn2(block.conv1(out)))) + shortcut
    act = block.relu1(block.bn1(x))
    out = block.conv2(block.relu2(block.bn2(block.conv1(act))))
    return out + (x if block.convShortcut is None else block.convShortcut(act))


@pytest.mark.parametrize("block_name", ["BasicBlock", "PreActBlock", "WideBasicBlock"])
@pytest.mark.parametrize("stride", [1, 2])
def test_in_place_residual_add_changes_no_value(block_name: str, stride: int, monkeypatch) -> None:
    """Train mode, forward, input gradient and weight gradients are bit-equal to ``out + shortcut``."""
    from atzoo.models import resnet, wideresnet

    cls = getattr(resnet, block_name, None) or getattr(wideresnet, block_name)
    results = []
    for forward in (cls.forward, _out_of_place):
        monkeypatch.setattr(cls, "forward", forward)
        torch.manual_seed(0)
        block = cls(8, 8 * stride, stride).train()
        x = torch.randn(4, 8, 6, 6, requires_grad=True)
        out = block(x)
        out.square().sum().backward()
        results.append([out.detach(), x.grad, *(p.grad for p in block.parameters()), *block.buffers()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


class _AddCounter(TorchFunctionMode):
    """Counts out-of-place and in-place tensor additions."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("add", "__add__", "add_", "__iadd__"):
            self.added.append("in place" if name in ("add_", "__iadd__") else "new tensor")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "wrn28_10"])
def test_residual_adds_allocate_no_new_tensor(name: str) -> None:
    """The residual sums are in place: no activation-sized allocation per block and pass."""
    model = create_model(name, 10, 3).eval()
    with torch.no_grad(), _AddCounter() as counter:
        model(torch.rand(1, 3, 32, 32))
    assert counter.added and set(counter.added) == {"in place"}
