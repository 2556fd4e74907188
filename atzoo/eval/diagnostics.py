"""Training diagnostics of the AR-AT paper (Waseda et al., ICLR 2025): gradient conflict,
feature drift and BN statistics.

* :func:`step_diagnostics` (every ``diagnostics.every`` steps):

  - ``diag/grad_cos``: cosine similarity between the parameter gradients of the
    classification loss (every part that is not a regulariser) and of the regulariser
    (parts for which ``method.is_regularizer(name)`` is true), over the model's trainable
    parameters (the network only: a method's extra modules such as AR-AT's predictors
    receive gradient from one of the two losses alone). A parameter without gradient
    from one loss counts as zeros there. 0 when either gradient is all zeros.
  - ``diag/grad_conflict``: among the scalar parameter entries where *both* gradients are
    nonzero, the fraction whose two gradients have opposite signs (the paper's "gradient
    conflict"); 0 when no entry has both nonzero.
  - ``diag/feature_drift``: ``mean_i ||z_i - z'_i||_2`` of the penultimate features of the
    clean and the training adversarial batch under the deployable network (eval mode,
    ``adv`` route for split-BN models).

  Only ``diag/feature_drift`` is returned for methods without a regulariser part.
  Nothing observable changes: parameter ``.grad`` is untouched (``torch.autograd.grad``),
  every buffer (BN running statistics, ``num_batches_tracked``) of the model and the
  method's modules is restored after the extra forward pass, the global RNG is forked,
  and the train/eval flags and BN route are restored.

* :func:`epoch_diagnostics` (each epoch): ``diag/bn_mean_var`` — for every BatchNorm layer,
  the variance across channels of its running mean (population variance), averaged over
  the BatchNorm layers. Routed-BN models report one value per route,
  ``diag/bn_mean_var/<route>`` (``adv``, ``clean``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from atzoo.attacks.mode import attack_mode, unwrap_model
from atzoo.models import penultimate_features
from atzoo.models.routed_bn import get_route, has_routed_bn, route_names, set_route

if TYPE_CHECKING:
    from atzoo.methods.base import Method


def step_diagnostics(
    method: "Method", model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
) -> dict[str, float]:
    """Gradient similarity/conflict of classification vs regulariser, and feature drift.

    Args:
        method: the run's :class:`~atzoo.methods.base.Method`.
        model: the network (a DDP wrapper is removed first).
        modules: the method's extra modules (unwrapped).
        x, x_adv, y: the training batch, its training adversarial example, the labels.

    Returns:
        ``diag/grad_cos``, ``diag/grad_conflict`` (methods with a regulariser) and
        ``diag/feature_drift`` as floats.
    """
    net = unwrap_model(model)
    out: dict[str, float] = {}
    with preserved_state(net, modules, x.device):
        out.update(gradient_agreement(method, net, modules, x, x_adv, y))
        if x_adv is not None:
            out["diag/feature_drift"] = feature_drift(net, x, x_adv)
    return out


def gradient_agreement(
    method: "Method", model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
) -> dict[str, float]:
    """``diag/grad_cos`` and ``diag/grad_conflict`` from one recomputation of the loss."""
    reg, cls = method.split_loss(method.compute_loss(model, modules, x, x_adv, y).parts)
    if reg is None or cls is None:
        return {}
    params = [p for p in model.parameters() if p.requires_grad]
    g_cls = flat_grad(cls, params, retain_graph=True)
    g_reg = flat_grad(reg, params, retain_graph=False)
    return {"diag/grad_cos": gradient_cosine(g_cls, g_reg), "diag/grad_conflict": conflict_fraction(g_cls, g_reg)}


def flat_grad(loss: Tensor, params: list[nn.Parameter], *, retain_graph: bool) -> Tensor:
    """Gradient of ``loss`` w.r.t. ``params`` as one flat float32 vector (None -> zeros)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float() for g, p in zip(grads, params)])


def gradient_cosine(g1: Tensor, g2: Tensor) -> float:
    """Cosine similarity of two flat gradients, in [-1, 1]; 0 if either is zero."""
    n1, n2 = g1.norm(), g2.norm()
    if n1 == 0 or n2 == 0:
        return 0.0
    return float(torch.clamp(torch.dot(g1, g2) / (n1 * n2), -1.0, 1.0))


def conflict_fraction(g1: Tensor, g2: Tensor) -> float:
    """Fraction of entries with both gradients nonzero whose signs are opposite, in [0, 1]."""
    both = (g1 != 0) & (g2 != 0)
    n_both = int(both.sum())
    if n_both == 0:
        return 0.0
    return int(((g1 * g2) < 0).sum()) / n_both


def feature_drift(model: nn.Module, x: Tensor, x_adv: Tensor) -> float:
    """``mean_i ||z_i - z'_i||_2`` of penultimate features, deployable network in eval mode."""
    route = "adv" if has_routed_bn(model) else None
    with torch.no_grad(), attack_mode(model, "eval", route):
        z = penultimate_features(model, x).float()
        z_adv = penultimate_features(model, x_adv).float()
    return float((z - z_adv).norm(dim=1).mean())


@contextmanager
def preserved_state(model: nn.Module, modules: nn.Module, device: torch.device) -> Iterator[None]:
    """Restores buffers, every module's train/eval flag, the BN route and the RNG after the block."""
    nets = (model, modules)
    saved = [(b, b.detach().clone()) for m in nets for b in m.buffers()]
    flags = [(m, m.training) for net in nets for m in net.modules()]
    route = get_route(model) if has_routed_bn(model) else None
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, copy in saved:
                    buffer.copy_(copy)
            for module, training in flags:
                module.training = training
            if route is not None:
                set_route(model, route)


# --------------------------------------------------------------------------- per epoch


def epoch_diagnostics(model: nn.Module) -> dict[str, float]:
    """Variance across channels of the BN running means, averaged over BN layers.

    Returns:
        ``{"diag/bn_mean_var": v}`` for plain models; ``{"diag/bn_mean_var/<route>": v}``
        per route for routed-BN models. Empty when the model has no BatchNorm with
        running statistics.
    """
    per_route: dict[str | None, list[float]] = {}
    for route, mean in bn_running_means(unwrap_model(model)):
        per_route.setdefault(route, []).append(float(mean.float().var(unbiased=False)))
    return {
        ("diag/bn_mean_var" if route is None else f"diag/bn_mean_var/{route}"): sum(v) / len(v)
        for route, v in per_route.items()
    }


def bn_running_means(model: nn.Module) -> Iterator[tuple[str | None, Tensor]]:
    """``(route, running_mean)`` for every BatchNorm with running statistics.

    The route is ``None`` in a plain model; in a routed-BN model each route's branch is a
    BatchNorm module named after its route (``layer1.0.bn1.branches.adv``).
    """
    routes = route_names(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            leaf = name.rsplit(".", 1)[-1]
            yield (leaf if leaf in routes else None), module.running_mean
