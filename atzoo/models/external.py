"""Classifiers from elsewhere for ``atzoo eval``: ``timm:NAME``, ``torchvision:NAME``,
``package.module:factory``, each with an optional weights file.

Every model atzoo evaluates takes images in [0, 1]. A network trained on normalised
inputs (torchvision's and RobustBench's ImageNet models, most timm weights) gets its
normalisation as a first layer from ``mean``/``std``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from atzoo.errors import CheckpointError, ConfigError

#: ``timm:NAME``, ``torchvision:NAME`` or ``package.module:factory``.
MODEL_SPEC = re.compile(r"^(?P<source>[A-Za-z_][\w.]*):(?P<name>[A-Za-z_][\w.\-]*)$")


def is_model_spec(text: str) -> bool:
    """Whether ``text`` names a model by ``source:name`` rather than a path."""
    return MODEL_SPEC.match(text) is not None and not Path(text).exists()


def _torchvision(name: str, num_classes: int) -> nn.Module:
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        names = ", ".join(sorted(torchvision.models.list_models())[:8])
        raise ConfigError(f"unknown torchvision model '{name}' (e.g. {names}, ...; see "
                          "torchvision.models.list_models())") from None


def _factory(module_name: str, attr: str) -> nn.Module:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import '{module_name}' for the model '{module_name}:{attr}': {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"'{module_name}' has no callable '{attr}' (give package.module:factory, a function "
                          "returning the nn.Module)")
    spec = f"{module_name}:{attr}"
    _check_no_required_arguments(factory, spec)
    try:
        model = factory()
    except (SystemExit, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        # sys:exit, or a script's factory that exits: not a model (and not a reason to exit 0).
        raise ConfigError(f"the model factory {spec} tried to exit the program (code {exc.code!r}); give a "
                          "function that returns an nn.Module") from None
    except TypeError as exc:
        raise ConfigError(f"the model factory {spec} failed when called without arguments: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{module_name}:{attr}() returned a {type(model).__name__}, not an nn.Module")
    return model


def _check_no_required_arguments(factory: object, spec: str) -> None:
    """Refuses a factory that cannot be called without arguments (atzoo passes none).

    Raises:
        ConfigError: naming the first required parameter.
    """
    import inspect

    try:
        signature = inspect.signature(factory)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a builtin without a signature: calling it decides
        return
    required = [p.name for p in signature.parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if required:
        raise ConfigError(f"the model factory {spec} needs the argument '{required[0]}'; atzoo calls it without "
                          "arguments: give a function that builds the model without arguments (e.g. a wrapper "
                          "with your settings)")


def build_external_model(
    spec: str,
    *,
    num_classes: int,
    in_channels: int,
    weights: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """The classifier ``spec`` names, with ``weights`` loaded, in eval mode.

    Args:
        spec: ``timm:NAME`` (atzoo's timm wrapper, so a timm run's ``model.safetensors``
            loads too), ``torchvision:NAME`` or ``package.module:factory``.
        num_classes, in_channels: of the dataset (not used by a factory).
        weights: a ``.safetensors`` or ``.pt``/``.pth`` state dict (``weights_only``);
            required for timm and torchvision, whose networks would be random otherwise.
        mean, std: normalisation the network expects, added as its first layer.

    Raises:
        ConfigError: an unknown source or name, or missing weights.
        CheckpointError: the weights do not fit the network.
    """
    from atzoo.models import create_model
    from atzoo.models.layers import make_normalize
    from atzoo.models.weights import load_weights

    match = MODEL_SPEC.match(spec)
    if match is None:
        raise ConfigError(f"'{spec}' is no model: give a run directory, a .safetensors file, timm:NAME, "
                          "torchvision:NAME or package.module:factory")
    source, name = match["source"], match["name"]
    if source in ("timm", "torchvision") and weights is None:
        raise ConfigError(f"{spec} needs --weights FILE (a .safetensors or .pt state dict); without it the network "
                          "is randomly initialised")
    if source == "timm":
        model = create_model(spec, num_classes, in_channels)
    elif source == "torchvision":
        model = _torchvision(name, num_classes)
    else:
        model = _factory(source, name)
    if weights is not None:
        load_weights(model, weights, what=f"--weights for {spec}")
    normalize = make_normalize(in_channels, mean is not None or std is not None, mean, std)
    if not isinstance(normalize, nn.Identity):
        model = nn.Sequential(normalize, model)
    return model.eval()


def check_weights_file(weights: Path | None) -> None:
    """Raises CheckpointError for a ``--weights`` path that is not a file."""
    if weights is not None and not weights.is_file():
        raise CheckpointError(f"--weights {weights} not found (give a .safetensors or .pt state dict)")
