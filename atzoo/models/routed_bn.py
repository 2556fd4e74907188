"""Routed (split) BatchNorm: one network, several sets of BN statistics and affine weights.

AR-AT (Waseda et al., "Rethinking Invariance Regularization in Adversarial Training to
Improve Robustness-Accuracy Trade-off") and Asym-TRADES pass clean images through an
auxiliary set of BatchNorms (``clean``) and adversarial ones through the main set
(``adv``); every other weight is shared. Here that is a layer, not a model fork:
:func:`convert_to_routed_bn` replaces each BatchNorm of any model by a
:class:`RoutedBatchNorm` holding one copy per route, and :func:`bn_route` picks the route::

    convert_to_routed_bn(model)                   # branches "adv" (main) and "clean"
    with bn_route(model, "clean"):
        logits_clean = model(x)
    with bn_route(model, "split"):                # both branches in one forward pass
        logits = model(torch.cat([x_adv, x]))     # first half -> adv, second half -> clean
    deployable = export_route(model, "adv")       # plain BN; loads into the plain architecture

The route is state of each :class:`RoutedBatchNorm` (its ``route`` attribute), so two
models never share it. On a model without routed BN every named route is the one set of
BNs it has, so ``bn_route(model, "clean")`` is a no-op there (the "without split-BN"
ablation); only ``split`` is refused, because a concatenated batch would mix the batch
statistics of the two halves.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from atzoo.errors import AtzooError

DEFAULT_ROUTES: tuple[str, ...] = ("adv", "clean")
SPLIT = "split"


class RoutedBatchNorm(nn.Module):
    """A BatchNorm with one independent copy (weights, bias, running statistics) per route.

    ``route`` names the branch the next forward uses. With ``route == "split"`` the batch
    is cut into ``len(routes)`` equal parts, part ``i`` goes through ``routes[i]`` (for the
    default routes: first half ``adv``, second half ``clean``) and the results are
    concatenated. Each part sees exactly what a separate pass through its branch would,
    including the running-statistics update.

    Args:
        bn: the BatchNorm to copy (BatchNorm1d/2d/3d, SyncBatchNorm, or a subclass).
        routes: branch names; the first is the main branch and the initial route.
    """

    def __init__(self, bn: _BatchNorm, routes: Sequence[str] = DEFAULT_ROUTES) -> None:
        super().__init__()
        self.routes = _check_routes(routes)
        self.branches = nn.ModuleDict({route: copy.deepcopy(bn) for route in self.routes})
        self.route = self.routes[0]
        self.train(bn.training)

    def forward(self, x: Tensor) -> Tensor:
        if self.route != SPLIT:
            return self.branches[self.route](x)
        parts = len(self.routes)
        if x.shape[0] % parts:
            raise AtzooError(
                f"BN route 'split' needs a batch of {parts} equal parts ({', '.join(self.routes)}), "
                f"got batch size {x.shape[0]}"
            )
        chunks = x.chunk(parts)
        return torch.cat([self.branches[route](chunk) for route, chunk in zip(self.routes, chunks)])

    def extra_repr(self) -> str:
        return f"routes={self.routes}, route={self.route!r}"


def _check_routes(routes: Sequence[str]) -> tuple[str, ...]:
    routes = tuple(routes)
    if not routes or len(set(routes)) != len(routes) or SPLIT in routes or not all(
        isinstance(r, str) and r and "." not in r for r in routes
    ):
        raise AtzooError(
            f"BN routes must be distinct non-empty names without '.', other than '{SPLIT}'; got {list(routes)}"
        )
    return routes


def _routed_modules(model: nn.Module) -> list[RoutedBatchNorm]:
    return [m for m in model.modules() if isinstance(m, RoutedBatchNorm)]


def convert_to_routed_bn(model: nn.Module, routes: Sequence[str] = DEFAULT_ROUTES) -> nn.Module:
    """Replaces every BatchNorm of ``model`` (in place) by a :class:`RoutedBatchNorm`.

    Each branch starts as a copy of the original BN (affine weights and running
    statistics), on the same device and dtype. Already-routed BNs are kept, so converting
    twice is harmless. A BN module shared by several parents stays shared.

    Args:
        model: any module; if it is itself a BatchNorm the routed replacement is returned.
        routes: branch names, main branch first.

    Returns:
        ``model`` (or the replacement of a bare BatchNorm).

    Raises:
        AtzooError: invalid routes, or the model already has routed BN with other routes.
    """
    routes = _check_routes(routes)
    for routed in _routed_modules(model):
        if routed.routes != routes:
            raise AtzooError(f"model already has routed BN with routes {list(routed.routes)}, not {list(routes)}")
    if isinstance(model, _BatchNorm):
        return RoutedBatchNorm(model, routes)
    _replace_bn(model, routes, memo={})
    return model


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every child slot, including repeats of a shared module (``named_children`` skips those)."""
    return [(name, child) for name, child in module._modules.items() if child is not None]


def _replace_bn(module: nn.Module, routes: tuple[str, ...], memo: dict[int, RoutedBatchNorm]) -> None:
    for name, child in _children(module):
        if isinstance(child, RoutedBatchNorm):
            continue
        if isinstance(child, _BatchNorm):
            if id(child) not in memo:
                memo[id(child)] = RoutedBatchNorm(child, routes)
            setattr(module, name, memo[id(child)])
        else:
            _replace_bn(child, routes, memo)


def has_routed_bn(model: nn.Module) -> bool:
    """Whether ``model`` contains a :class:`RoutedBatchNorm`."""
    return any(isinstance(m, RoutedBatchNorm) for m in model.modules())


def route_names(model: nn.Module) -> tuple[str, ...]:
    """The branch names of ``model``'s routed BN (``()`` without routed BN)."""
    routed = _routed_modules(model)
    return routed[0].routes if routed else ()


def get_route(model: nn.Module) -> str | None:
    """The current route (of the first routed BN; :func:`set_route` keeps them equal).

    Returns:
        the route, or ``None`` when the model has no routed BN.
    """
    routed = _routed_modules(model)
    return routed[0].route if routed else None


def _validate_route(model: nn.Module, routed: list[RoutedBatchNorm], route: str) -> None:
    valid = (routed[0].routes if routed else DEFAULT_ROUTES) + (SPLIT,)
    if route not in valid:
        raise AtzooError(f"unknown BN route '{route}'. Valid choices: {', '.join(valid)}")
    if route == SPLIT and not routed and any(isinstance(m, _BatchNorm) for m in model.modules()):
        raise AtzooError(
            "BN route 'split' needs routed BatchNorm (convert_to_routed_bn); a plain BN would mix "
            "the statistics of the two halves"
        )


def set_route(model: nn.Module, route: str) -> None:
    """Sets the route of every routed BN in ``model``.

    Args:
        route: a branch name (``"adv"``, ``"clean"``) or ``"split"``. On a model without
            routed BN a branch name is a no-op (its BNs serve every route).

    Raises:
        AtzooError: unknown route, or ``"split"`` on a model with plain BatchNorm.
    """
    routed = _routed_modules(model)
    _validate_route(model, routed, route)
    for module in routed:
        module.route = route


@contextmanager
def bn_route(model: nn.Module, route: str | None) -> Iterator[nn.Module]:
    """Runs the block with ``model``'s BNs on ``route``; restores each BN's previous route.

    Args:
        model: the (unwrapped) model.
        route: as for :func:`set_route`; ``None`` leaves the routes as they are.

    Yields:
        ``model``.
    """
    if route is None:
        yield model
        return
    routed = _routed_modules(model)
    _validate_route(model, routed, route)
    previous = [(module, module.route) for module in routed]
    try:
        for module in routed:
            module.route = route
        yield model
    finally:
        for module, old in previous:
            module.route = old


def export_route(model: nn.Module, route: str = "adv") -> nn.Module:
    """A deep copy of ``model`` with each routed BN replaced by its ``route`` branch.

    The result has plain BatchNorm modules under the original names, so its state dict
    loads (strictly) into the unconverted architecture. ``model`` is not changed.

    Raises:
        AtzooError: ``route`` is not a branch of the model (``"split"`` is not one).
    """
    routed = _routed_modules(model)
    valid = routed[0].routes if routed else DEFAULT_ROUTES
    if route not in valid:
        raise AtzooError(f"cannot export BN route '{route}'. Valid choices: {', '.join(valid)}")
    plain = copy.deepcopy(model)
    if isinstance(plain, RoutedBatchNorm):
        return plain.branches[route]
    _unroute(plain, route)
    return plain


def _unroute(module: nn.Module, route: str) -> None:
    for name, child in _children(module):
        if isinstance(child, RoutedBatchNorm):
            setattr(module, name, child.branches[route])
        else:
            _unroute(child, route)
