"""The model state an attack runs in: unwrapped, a fixed train/eval mode and BN route.

Every attack in atzoo follows the torchattacks contract: it runs on the unwrapped
network (never through a DDP wrapper, whose forward would arm a gradient all-reduce),
puts the model in the mode the caller asks for, and leaves the model exactly as it
found it. :func:`attack_mode` does the setting and restoring; :func:`frozen_parameters`
lets third-party attacks that call ``loss.backward()`` (FAB in AutoAttack) run
without touching any parameter ``.grad``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from atzoo.errors import ConfigError

MODES: tuple[str, ...] = ("eval", "train")

# Wrappers whose ``.module`` is the network itself; their forward adds gradient hooks
# (DDP) or scatters the batch (DataParallel), neither wanted during an attack.
_WRAPPERS: tuple[type[nn.Module], ...] = (nn.parallel.DistributedDataParallel, nn.DataParallel)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Returns the network inside DDP/DataParallel wrappers (``model`` if unwrapped)."""
    while isinstance(model, _WRAPPERS):
        model = model.module
    return model


def check_mode(mode: str) -> None:
    """Raises ConfigError unless ``mode`` is ``"eval"`` or ``"train"``."""
    if mode not in MODES:
        raise ConfigError(f"attack mode must be one of {', '.join(MODES)}, got {mode!r}")


@contextmanager
def attack_mode(model: nn.Module, mode: str, route: str | None) -> Iterator[nn.Module]:
    """Puts ``model`` in ``mode`` (and BN ``route``) for an attack; restores both on exit.

    The training flag of *every* submodule is recorded and restored one by one, because
    a model may legitimately mix modes (e.g. a frozen teacher kept in eval mode inside
    a module in train mode). ``mode="train"`` makes BatchNorm use and update batch
    statistics during the attack, as the official AR-AT code does.

    Args:
        model: the network (wrappers are removed first).
        mode: ``"eval"`` or ``"train"``.
        route: BN route to attack through (``"adv"``, ``"clean"``, ``"split"``) for
            models with routed BatchNorm; ``None`` keeps the current route. Ignored for
            models without routed BatchNorm.

    Yields:
        The unwrapped model, in the requested state.
    """
    from atzoo.models.routed_bn import get_route, has_routed_bn, set_route

    check_mode(mode)
    net = unwrap_model(model)
    flags = [(module, module.training) for module in net.modules()]
    routed = has_routed_bn(net)
    previous_route = get_route(net) if routed else None
    try:
        net.train(mode == "train")
        if routed and route is not None:
            set_route(net, route)
        yield net
    finally:
        for module, training in flags:
            module.training = training
        if routed and previous_route is not None:
            set_route(net, previous_route)


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Sets ``requires_grad=False`` on every parameter inside the block, then restores it.

    Attacks that call ``backward()`` on a loss then only produce the input gradient:
    no parameter ``.grad`` is created or changed, and no time is spent on weight
    gradients.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)
