"""Small building blocks shared by the atzoo architectures.

Images enter every atzoo model in [0, 1] (see ``docs/architecture.md``). Normalisation,
when wanted, is the model's first layer, so attacks and the eps-ball live in pixel space
and an exported model carries its own mean and std.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from atzoo.errors import ConfigError



class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as a layer.

    The statistics are persistent buffers: a state dict saved with normalisation on does
    not load strictly into a model built without it, so a mismatch cannot go unnoticed.

    Args:
        mean: one value per input channel.
        std: one value per input channel, all positive.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"channels={self.mean.shape[1]}"


def make_normalize(
    in_channels: int, normalize: bool, mean: Sequence[float] | None, std: Sequence[float] | None
) -> nn.Module:
    """The model's first layer: :class:`Normalize` when ``normalize`` is on, else identity.

    Raises:
        ConfigError: normalisation is on but ``mean``/``std`` are missing, have the wrong
            length for ``in_channels``, or ``std`` has a non-positive entry.
    """
    if not normalize:
        return nn.Identity()
    if mean is None or std is None:
        raise ConfigError("normalize=True needs both mean and std (one value per input channel)")
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(
            f"normalize: mean has {len(mean)} and std {len(std)} values, expected {in_channels} "
            f"(one per input channel)"
        )
    if any(float(s) <= 0 for s in std):
        raise ConfigError(f"normalize: every std must be positive, got {list(std)}")
    return Normalize(mean, std)


def pooling() -> nn.Sequential:
    """Global average pooling to ``(B, C)``; its output is the penultimate feature vector.

    Adaptive pooling (rather than a fixed 4x4 or 8x8 window as in the CIFAR reference code)
    gives the same result at 32x32 and lets the same network run on smaller inputs.
    """
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


#: An architecture's constructor: ``factory(num_classes, in_channels, first_layer)``, where
#: ``first_layer`` is the normalisation layer (or identity) the network applies first.
NetFactory = Callable[[int, int, nn.Module], nn.Module]


def normalized(factory: NetFactory, doc: str | None = None) -> Callable[..., nn.Module]:
    """The builder of ``factory`` with the registered-model signature (``create_model``'s
    minus ``name``): the one place that wires the normalisation layer (:func:`make_normalize`)."""

    def builder(num_classes: int, in_channels: int = 3, *, normalize: bool = False,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> nn.Module:
        return factory(num_classes, in_channels, make_normalize(in_channels, normalize, mean, std))

    builder.__name__ = builder.__qualname__ = getattr(factory, "__name__", "builder")
    builder.__doc__ = doc or factory.__doc__
    return builder


def architecture(
    name: str, *taps: str, tap_sets: dict[str, tuple[str, ...]] | None = None
) -> Callable[[NetFactory], Callable[..., nn.Module]]:
    """Registers ``factory`` in ``MODELS`` as ``name`` (through :func:`normalized`).

    Args:
        taps: the default AR-AT tap patterns (``builder.default_taps``); none: the
            penultimate features.
        tap_sets: other named tap sets (``builder.tap_sets``), selectable by name in
            ``method.layers`` (e.g. ``block_output``); ``default`` always names ``taps``.
    """
    from atzoo.registry import MODELS

    def decorator(factory: NetFactory) -> Callable[..., nn.Module]:
        builder = normalized(factory)
        if taps:
            builder.default_taps = tuple(taps)  # type: ignore[attr-defined]
        builder.tap_sets = dict(tap_sets or {})  # type: ignore[attr-defined]
        MODELS.add(name, builder)
        return builder

    return decorator
