"""Architectures, routed (split) BatchNorm, feature taps and predictor heads.

Models are built by name through the ``MODELS`` registry::

    model = create_model("resnet18", num_classes=10)
    model = create_model("timm:resnet18", num_classes=10)      # any timm architecture

Every model takes images in [0, 1] (optional normalisation is its first layer), exposes
``forward_features(x) -> (B, d)`` and a linear head ``fc``, and gives each ReLU site its
own ``nn.ReLU`` module so feature taps can hook it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from atzoo.errors import AtzooError, ConfigError
from atzoo.models import resnet, small_cnn, timm_models, wideresnet  # noqa: F401  (fill MODELS)
from atzoo.models.predictor import build_predictor
from atzoo.models.routed_bn import (
    RoutedBatchNorm,
    bn_route,
    convert_to_routed_bn,
    export_route,
    get_route,
    has_routed_bn,
    set_route,
)
from atzoo.models.taps import FeatureTaps, TapError, resolve_tap_names
from atzoo.models.timm_models import pretrained_timm_builder
from atzoo.registry import MODELS

__all__ = [
    "FeatureTaps",
    "RoutedBatchNorm",
    "TapError",
    "bn_route",
    "build_predictor",
    "classify_features",
    "convert_to_routed_bn",
    "count_parameters",
    "create_model",
    "default_tap_patterns",
    "expand_tap_patterns",
    "tap_sets",
    "describe_model",
    "export_route",
    "get_route",
    "has_penultimate_features",
    "has_routed_bn",
    "parameter_count",
    "penultimate_features",
    "resolve_tap_names",
    "set_route",
]

#: Default taps of architectures that declare none: the penultimate (pooled) features.
PENULTIMATE_TAPS: tuple[str, ...] = ("pool",)


def _check_count(label: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model {label} must be a positive integer, got {value!r}")


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    normalize: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """Builds the registered model ``name`` (or ``timm:NAME``) with random weights.

    Args:
        name: a registered model name, or ``timm:NAME``.
        num_classes: outputs of the linear head.
        in_channels: input image channels.
        normalize: add a ``(x - mean) / std`` first layer (off by default, as in the
            official code of TRADES, MART, LBGAT and AR-AT).
        mean: per-channel mean, required when ``normalize``.
        std: per-channel std, required when ``normalize``.
        pretrained: start from timm's pretrained weights (``timm:NAME`` models only).

    Raises:
        RegistryError: unknown name (the message lists the valid names).
        ConfigError: invalid class/channel counts or normalisation statistics, or
            ``pretrained`` for a model that has no pretrained weights.
        CheckpointError: the pretrained weights cannot be loaded (e.g. offline).
    """
    _check_count("num_classes", num_classes)
    _check_count("in_channels", in_channels)
    builder = MODELS.get(name)
    if pretrained:
        if not name.startswith("timm:"):
            raise ConfigError(f"model.pretrained=true needs a timm:NAME model (timm holds the weights); "
                              f"'{name}' is built from scratch only")
        builder = pretrained_timm_builder(name)
    return builder(num_classes, in_channels, normalize=normalize, mean=mean, std=std)


def _is_bare_timm(model: nn.Module) -> bool:
    """A timm network used directly (its ``forward_features`` returns an unpooled map)."""
    return hasattr(model, "forward_head") and hasattr(model, "get_classifier")


def has_penultimate_features(model: nn.Module) -> bool:
    """Whether :func:`penultimate_features` works on ``model`` (atzoo and timm models).

    Any other classifier (an ``nn.Sequential``, a torchvision network) is evaluated on its
    logits alone; measurements that need features (invariance) are skipped for it.
    """
    return _is_bare_timm(model) or (hasattr(model, "forward_features") and isinstance(getattr(model, "fc", None), nn.Module))


def penultimate_features(model: nn.Module, x: Tensor) -> Tensor:
    """The pooled features ``(B, d)`` that the linear head classifies.

    Works on atzoo architectures (``forward_features``) and on bare timm networks
    (``forward_head(forward_features(x), pre_logits=True)``). Runs under the model's
    current mode and BN route.

    Raises:
        AtzooError: the model exposes neither interface.
    """
    if _is_bare_timm(model):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    if hasattr(model, "forward_features"):
        return model.forward_features(x)
    raise AtzooError(f"{type(model).__name__} has no forward_features; cannot take penultimate features")


def classify_features(model: nn.Module, z: Tensor) -> Tensor:
    """Logits from penultimate features: ``model(x) == classify_features(model, penultimate_features(model, x))``.

    Raises:
        AtzooError: the model has neither ``get_classifier()`` nor a head ``fc``.
    """
    if _is_bare_timm(model):
        return model.get_classifier()(z)
    head = getattr(model, "fc", None)
    if not isinstance(head, nn.Module):
        raise AtzooError(f"{type(model).__name__} has no linear head 'fc'; cannot classify features")
    return head(z)


def default_tap_patterns(model_name: str) -> list[str]:
    """AR-AT's default tapped layers for an architecture.

    ResNet-18: the official scripts' ``layer4.{0,1}.bn{1,2}`` (ReLU of each BN output, the
    ``bn2`` feature taken before the shortcut add); PreAct ResNet-18: every ReLU module of
    ``layer4``; WRN-34-10 / WRN-28-10: every ReLU output of ``block3`` plus the pooled output
    (11 features for WRN-34-10, as the official scripts); any other model (``small_cnn``,
    ``timm:*``): the penultimate features (``pool``).

    Raises:
        RegistryError: unknown model name.
    """
    builder = MODELS.get(model_name)
    return list(getattr(builder, "default_taps", PENULTIMATE_TAPS))


def tap_sets(model_name: str) -> dict[str, list[str]]:
    """The named tap sets of an architecture: ``default`` plus those it declares
    (ResNet-18: ``block_output``, the ReLU modules of ``layer4`` after the shortcut add).

    Raises:
        RegistryError: unknown model name.
    """
    builder = MODELS.get(model_name)
    named = {name: list(patterns) for name, patterns in getattr(builder, "tap_sets", {}).items()}
    return {"default": default_tap_patterns(model_name), **named}


def expand_tap_patterns(model_name: str, patterns: Sequence[str]) -> list[str]:
    """``patterns`` with every entry that names a tap set of the model replaced by its patterns."""
    sets = tap_sets(model_name) if model_name in MODELS else {}
    out: list[str] = []
    for pattern in patterns:
        out += sets.get(pattern, [pattern])
    return out


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def parameter_count(name: str, num_classes: int = 10, in_channels: int = 3) -> int:
    """Parameters of model ``name``, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = create_model(name, num_classes, in_channels)
    return count_parameters(model)


def describe_model(name: str) -> str:
    """One line for ``atzoo list models``: the builder's summary and its parameter count."""
    builder = MODELS.get(name)
    doc = (builder.__doc__ or "").strip()
    summary = doc.splitlines()[0].rstrip(".") if doc else name
    return f"{summary}; {parameter_count(name) / 1e6:.2f} M params at 10 classes"
