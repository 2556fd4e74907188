"""The SimSiam-style predictor head of AR-AT.

Chen and He, "Exploring Simple Siamese Representation Learning", CVPR 2021, as used by
AR-AT (Waseda et al.) on the adversarial features only: ``h(z') = W2 relu(BN(W1 z'))``
with a bottleneck of ``d / 4`` and no bias before the BatchNorm (the BN shift replaces it).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from atzoo.errors import ConfigError


def build_predictor(dim: int, hidden: int | None = None) -> nn.Module:
    """``Linear(d, h, bias=False) -> BatchNorm1d(h) -> ReLU -> Linear(h, d)``.

    Args:
        dim: feature dimension ``d`` (input and output).
        hidden: bottleneck width ``h``; default ``max(1, d // 4)``.

    Returns:
        an ``nn.Sequential`` with children ``fc1``, ``bn``, ``relu``, ``fc2``.

    Raises:
        ConfigError: ``dim`` or ``hidden`` is not a positive integer.
    """
    _check_positive("dim", dim)
    hidden = max(1, dim // 4) if hidden is None else hidden
    _check_positive("hidden", hidden)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(dim, hidden, bias=False),
            bn=nn.BatchNorm1d(hidden),
            relu=nn.ReLU(),
            fc2=nn.Linear(hidden, dim),
        )
    )


def _check_positive(label: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"predictor {label} must be a positive integer, got {value!r}")
