"""Any timm architecture as ``timm:NAME`` (for example ``timm:resnet18`` for Imagenette).

The network is built by ``timm.create_model(NAME, pretrained=..., num_classes=...,
in_chans=...)``: randomly initialised, or from timm's pretrained weights with
``model.pretrained=true``. It is wrapped in
:class:`TimmClassifier` so that it keeps the atzoo contract (optional normalisation first
layer, ``forward_features(x) -> (B, d)``, linear head ``fc``, a ``pool`` module whose
output is the penultimate feature vector, for taps).

In-place activations are switched off: a tapped activation must keep the value it had when
its hook ran, and its output may be part of a loss that autograd differentiates.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import Tensor, nn

from atzoo.errors import CheckpointError, RegistryError
from atzoo.models.layers import normalized
from atzoo.registry import MODELS


class TimmClassifier(nn.Module):
    """A timm network with atzoo's interface.

    ``forward_features`` returns timm's ``forward_head(..., pre_logits=True)`` (pooled
    features after any head normalisation), and ``fc`` is timm's ``get_classifier()``,
    so ``fc(forward_features(x))`` equals the timm network's own output.

    Args:
        net: a timm model (with ``forward_features``, ``forward_head``, ``get_classifier``).
        normalize: the optional first layer (identity when off).
    """

    def __init__(self, net: nn.Module, normalize: nn.Module) -> None:
        super().__init__()
        if not isinstance(net.get_classifier(), nn.Module):
            raise RegistryError(
                f"timm model {type(net).__name__} has more than one classifier head; "
                f"atzoo needs a single linear head"
            )
        self.normalize = normalize
        self.net = net
        self.pool = nn.Identity()  # marks the penultimate features for feature taps

    @property
    def fc(self) -> nn.Module:
        """The linear classifier (owned by ``net``; not registered twice)."""
        return self.net.get_classifier()

    def forward_features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, d)``."""
        features = self.net.forward_features(self.normalize(x))
        return self.pool(self.net.forward_head(features, pre_logits=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def _disable_inplace(net: nn.Module) -> None:
    for module in net.modules():
        if getattr(module, "inplace", None) is True:
            module.inplace = False


def timm_factory(timm_name: str, pretrained: bool = False) -> Callable[[int, int, nn.Module], nn.Module]:
    """``timm:timm_name`` as an architecture constructor: random initialisation, or timm's
    pretrained weights (``model.pretrained=true``).

    With ``pretrained``, timm loads its weights (from the Hugging Face Hub cache,
    downloading them on first use), replaces the classifier for ``num_classes`` and adapts
    the first convolution to ``in_channels``.
    """

    def factory(num_classes: int, in_channels: int, first: nn.Module) -> nn.Module:
        import timm

        try:
            net = timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels)
        except Exception as exc:  # the Hub client's errors (network, cache, missing file) vary by version
            if not pretrained:
                raise
            raise _pretrained_error(timm_name, exc) from None
        _disable_inplace(net)
        return TimmClassifier(net, first)

    return factory


def _pretrained_error(timm_name: str, exc: Exception) -> CheckpointError:
    """One line: why timm's weights could not be had, and what to do."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = first[:120] + ("..." if len(first) > 120 else "")
    return CheckpointError(
        f"model.pretrained: cannot load timm's pretrained weights for '{timm_name}' ({type(exc).__name__}: {first}); "
        "they are downloaded from the Hugging Face Hub on first use, so connect once or copy the cache (HF_HOME), "
        "or set model.pretrained=false"
    )


def pretrained_timm_builder(name: str) -> Callable[..., nn.Module]:
    """The builder of ``timm:NAME`` (checked as :func:`resolve_timm` does) that starts
    from timm's pretrained weights."""
    resolve_timm(name.removeprefix("timm:"))
    timm_name = name.removeprefix("timm:")
    return normalized(timm_factory(timm_name, pretrained=True), f"timm {timm_name} (pretrained)")


def portable_module(model: nn.Module) -> nn.Module:
    """The module whose state dict a run exports: timm's own network for ``timm:`` models.

    ``model.safetensors`` of a timm run thus holds timm's keys (no ``net.`` prefix) and
    loads into ``timm.create_model(NAME, num_classes=...)`` with ``strict=True``; the
    optional normalisation layer is recorded in ``model_meta.json`` instead. Any other
    model is exported whole.
    """
    return model.net if isinstance(model, TimmClassifier) else model


def weights_target(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """The module ``state`` loads into: timm's network for a portable timm state dict,
    else ``model`` itself (atzoo architectures, and timm exports of earlier versions)."""
    if isinstance(model, TimmClassifier) and not any(k.startswith("net.") for k in state):
        return model.net
    return model


def resolve_timm(timm_name: str) -> Callable[..., nn.Module]:
    """The ``timm:`` prefix resolver: a builder with the registered-model signature.

    Raises:
        RegistryError: timm does not know ``timm_name`` (the message names close matches).
    """
    import timm

    if not timm_name or not timm.is_model(timm_name):
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(f'timm:{c}' for c in close)}?" if close else ""
        raise RegistryError(f"unknown timm model '{timm_name}'.{hint} See timm.list_models() for the names.")
    return normalized(timm_factory(timm_name), f"timm {timm_name} (random initialisation)")


MODELS.register_prefix(
    "timm", resolve_timm, help="any timm architecture, e.g. timm:resnet18 (random init; model.pretrained=true: timm's weights)"
)
