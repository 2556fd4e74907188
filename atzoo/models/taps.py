"""Feature taps: collect intermediate features by module name, with forward hooks.

AR-AT regularises the features of several layers (ResNet-18: every ReLU output of
``layer4``). A tap set is a list of exact module names or :mod:`fnmatch` globs
(``layer4.*relu*``; ``*`` also matches dots). Every pattern must match at least one
module; a pattern that matches nothing is an error before any training starts::

    with FeatureTaps(model, ["layer4.*relu*"]) as taps:
        logits = model(x)
    feats = [taps.features[name] for name in taps.names]   # each (B, C)

Pooled features are ``ReLU`` followed by a global average over every dimension after the
channel dimension (dim 1), as in the official AR-AT code; a ``(B, C)`` output is only
passed through the ReLU. Features are computed per sample and keep their autograd graph.
Under the ``split`` BN route they are the features of the whole concatenated batch; the
caller splits them.

Unlike the official AR-AT feature extractor, which takes any hooked output of length 2
for a ``(tensor, bn_name)`` pair (so a batch of exactly two images yields wrong features),
only tensor outputs are accepted and their batch dimension is never interpreted.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from atzoo.errors import ConfigError


class TapError(ConfigError):
    """A tap pattern matches no module, or a tapped module does not return a tensor."""


def _module_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def resolve_tap_names(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Module names matched by ``patterns`` (exact names or globs), in the model's order.

    Raises:
        TapError: no patterns, or a pattern matches no module (the one-line message names
            the pattern and the closest module names).
    """
    if isinstance(patterns, str):  # one pattern given bare, not as a list of characters
        patterns = [patterns]
    if not patterns:
        raise TapError("no feature-tap patterns given; name at least one module (e.g. 'layer4.*relu*')")
    names = _module_names(model)
    matched: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            raise TapError(_unmatched_message(model, pattern, names))
        matched |= hits
    return [n for n in names if n in matched]


def _unmatched_message(model: nn.Module, pattern: str, names: list[str]) -> str:
    close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
    if not close:  # fall back to names sharing the pattern's first component
        head = pattern.split(".")[0].strip("*?[]")
        close = [n for n in names if head and head in n][:5]
    top_level = ", ".join(n for n in names if "." not in n)
    hint = f"Near matches: {', '.join(close)}" if close else f"Top-level modules: {top_level}"
    return f"feature-tap pattern '{pattern}' matches no module of {type(model).__name__}. {hint}"


def pool_features(output: Tensor) -> Tensor:
    """``ReLU`` then global average over the dimensions after dim 1: ``(B, C, ...) -> (B, C)``."""
    out = F.relu(output)
    return out.flatten(2).mean(dim=2) if out.dim() > 2 else out


class FeatureTaps:
    """Context manager that records the outputs of the modules named by ``patterns``.

    Patterns are resolved (and checked) on construction and again on entry, so a model
    changed in between (e.g. converted to routed BN) is handled. Hooks exist only inside
    the ``with`` block. ``features`` is refilled by every forward pass; the last pass's
    features stay readable after the block.

    Args:
        model: the (unwrapped) model.
        patterns: exact module names or fnmatch globs.
        pooled: ReLU + global-average-pool each feature to ``(B, C)``; ``False`` keeps the
            raw module output.

    Attributes:
        names: the resolved module names, in model order.
        features: module name -> feature tensor of the latest forward pass.
    """

    def __init__(self, model: nn.Module, patterns: Sequence[str], pooled: bool = True) -> None:
        self.model = model
        self.patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        self.pooled = pooled
        self.names: list[str] = resolve_tap_names(model, self.patterns)
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> "FeatureTaps":
        if self._handles:
            raise RuntimeError("FeatureTaps is already active; it cannot be entered twice")
        self.names = resolve_tap_names(self.model, self.patterns)
        self.features = {}
        modules = dict(self.model.named_modules())
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.names]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Removes the hooks (done automatically on leaving the ``with`` block)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str):  # noqa: ANN202 (torch hook signature)
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                raise TapError(
                    f"tapped module '{name}' ({type(module).__name__}) returns {type(output).__name__}, "
                    f"not a tensor; tap a module that returns one tensor"
                )
            # A raw map is copied: a later in-place op of the network (the residual
            # ``out += shortcut`` after ``bn2``) would otherwise change the stored feature.
            self.features[name] = pool_features(output) if self.pooled else output.clone()

        return hook

    def as_list(self) -> list[Tensor]:
        """The features of the latest pass in the order of :attr:`names`.

        Raises:
            RuntimeError: a tapped module did not run in the latest pass.
        """
        missing = [n for n in self.names if n not in self.features]
        if missing:
            raise RuntimeError(f"tapped modules did not run in the last forward pass: {', '.join(missing)}")
        return [self.features[n] for n in self.names]

    def clear(self) -> None:
        """Forgets the recorded features (e.g. between a clean and an adversarial pass)."""
        self.features = {}
