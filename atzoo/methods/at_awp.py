"""Wu, Xia and Wang, "Adversarial Weight Perturbation Helps Robust Generalization", NeurIPS 2020: AT-AWP.

AWP perturbs the weights as well as the inputs (the paper's Eq. 7 and Algorithm 1)::

    min_w  max_{v in V(w)}  (1/B) sum_i  max_{||x'_i - x_i|| <= eps}  L(f_{w+v}(x'_i), y_i)
    V(w) = { v : ||v_l|| <= gamma * ||w_l|| for every layer l }

with ``L`` the cross-entropy for AT-AWP. Per batch, with one ascent step on ``v`` (as in
the paper's experiments):

1. ``x'`` = the run's training attack (CE-PGD-10);
2. a proxy copy of the network, loaded with ``w`` and in train mode (so the model's BatchNorm
   statistics are untouched), evaluates the method's own training loss on the batch;
   ``g = dL/dw`` there (the direction that *increases* the loss);
3. every layer weight -- a trainable parameter whose name contains ``weight`` and that has
   more than one dimension, i.e. convolution and linear weights, not BatchNorm affine weights
   nor biases -- gets ``v_l = gamma * ||w_l|| * g_l / ||g_l||`` (Frobenius norms of the whole
   tensor);
4. ``w <- w + v``; the engine's forward, backward and optimizer step run at ``w + v``; then
   ``v`` is removed, so the step is ``w <- w - lr * update(grad L(w + v))``.

AWP is off for the first ``warmup_epochs`` epochs (0-based epochs below it).

Deviations from the official code (github.com/csdongxian/AWP, ``AT_AWP``):

* The official code takes one SGD step of the proxy on ``-L`` (learning rate 0.01; 0.1 in
  TRADES-AWP) and uses the change of the proxy's weights as the direction. That change is
  ``lr * g`` and is rescaled to ``gamma * ||w_l||``, so the learning rate cancels: atzoo uses
  ``g`` itself (the same perturbation up to float rounding; no proxy optimizer, no state).
* Gradient accumulation (``optim.grad_accum = k``): on the first k-1 batches of a step the
  optimizer leaves the weights alone, and the saved ``w`` is copied back instead of
  subtracting ``v`` (which would leave ``(w + v) - v``, off by rounding). Each batch gets its
  own ``v``, computed at the unperturbed weights. Otherwise ``v`` is subtracted after the
  optimizer step, as in the official code.
* With several processes the gradient ``g`` is summed over processes before the rescaling,
  so every replica gets the same ``v`` (the official single-process code sees the whole batch).
* ``gamma = 0`` turns AWP off in the official code; here the (zero) perturbation is still
  computed, so ``at_awp`` with ``gamma = 0`` trains exactly as ``at`` (a test checks it, bit
  for bit) at AWP's cost.
* The official AT-AWP code (built on Rice et al.'s ``robust_overfitting``) attacks with the
  model in train mode: that is ``at_awp``'s default (``attack.bn_mode=train``); ``at`` attacks
  in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from atzoo.config import MethodConfig
from atzoo.errors import ConfigError
from atzoo.methods.at import AT, ATConfig
from atzoo.methods.base import Method, MethodContext, StepContext, proxy_copy
from atzoo.registry import METHODS

#: Added to ``||g_l||`` so that a layer without gradient gets ``v_l = 0`` (official: 1e-20).
EPS = 1e-20

#: One perturbed weight: ``(parameter, v, its value before when the optimizer step will not change it)``.
Saved = tuple[nn.Parameter, Tensor, Tensor | None]


def perturbed_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The layer weights AWP perturbs: trainable, named ``*weight*``, more than one dimension.

    That is every convolution and linear weight; BatchNorm's affine weights (1-D) and all
    biases are left alone, as in the official code.
    """
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and "weight" in n and p.dim() > 1]


def layer_scaled(direction: Tensor, weight: Tensor, gamma: float) -> Tensor:
    """``gamma * ||w_l|| * d_l / ||d_l||``: the direction rescaled to the layer's own size (Eq. 8)."""
    return direction * (gamma * weight.norm() / (direction.norm() + EPS))


def _summed(grads: list[Tensor], all_reduce_sum: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """The gradients summed over processes (one reduction of the flattened list)."""
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))
    return [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)]


def weight_perturbation(
    model: nn.Module, proxy: nn.Module, loss_fn: Callable[[nn.Module], Tensor], gamma: float,
    all_reduce_sum: Callable[[Tensor], Tensor] = lambda t: t,
) -> list[tuple[nn.Parameter, Tensor]]:
    """AWP's ``v`` for every layer weight of ``model``: one ascent step of ``loss_fn``, rescaled per layer.

    Args:
        model: the network (its parameters are read, never changed or given gradients).
        proxy: a scratch copy of ``model`` (:func:`~atzoo.methods.base.proxy_copy`); it is
            loaded with ``model``'s weights and buffers and run in train mode.
        loss_fn: the loss to increase, evaluated on the proxy.
        gamma: the relative size of the perturbation of each layer.
        all_reduce_sum: sums the gradient over processes (identity with one).

    Returns:
        ``(parameter of model, v)`` pairs.
    """
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    targets = perturbed_weights(model)
    proxy_params = dict(proxy.named_parameters())
    with torch.enable_grad():
        loss = loss_fn(proxy)
        grads = torch.autograd.grad(loss, [proxy_params[n] for n, _ in targets], allow_unused=True)
    grads = _summed([torch.zeros_like(p) if g is None else g.detach() for (_, p), g in zip(targets, grads)],
                    all_reduce_sum)
    return [(p, layer_scaled(g, p.detach(), gamma)) for (_, p), g in zip(targets, grads)]


def perturb(perturbation: list[tuple[nn.Parameter, Tensor]], *, keep_original: bool = False) -> list[Saved]:
    """Adds each ``v`` to its parameter in place; returns what :func:`restore` needs.

    Args:
        keep_original: save the unperturbed values (when the optimizer step will not change
            the weights, so that :func:`restore` gives them back bit for bit).
    """
    saved: list[Saved] = []
    with torch.no_grad():
        for p, v in perturbation:
            saved.append((p, v, p.detach().clone() if keep_original else None))
            p.add_(v)
    return saved


def restore(saved: list[Saved]) -> None:
    """Removes the perturbation after the optimizer step: ``w - v``, or the saved ``w`` itself."""
    with torch.no_grad():
        for p, v, original in saved:
            if original is None:
                p.sub_(v)
            else:
                p.copy_(original)


class WeightPerturbation(Method):
    """Adds AWP to a method (put it before the method in the bases, e.g. ``(WeightPerturbation, AT)``).

    The proxy maximises the method's own training loss (:meth:`compute_loss`): CE on ``x'``
    for AT, ``CE(f(x), y) + beta * KL`` for TRADES. The config needs ``gamma`` and
    ``warmup_epochs``.
    """

    def __init__(self, config: MethodConfig, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        self._proxy: nn.Module | None = None  # built from the model at the first perturbed step
        self._saved: list[Saved] = []  # the perturbation in place between the two hooks

    def awp_active(self, epoch: int) -> bool:
        """Whether AWP perturbs the weights in this (0-based) epoch."""
        return epoch >= self.config.warmup_epochs  # type: ignore[attr-defined]

    def proxy_loss(self, proxy: nn.Module, step: StepContext) -> Tensor:
        """The loss the perturbation increases: the method's training loss at the proxy."""
        return self.compute_loss(proxy, step.modules, step.x, step.x_adv, step.y).total()

    def before_step(self, step: StepContext) -> None:
        """Computes ``v`` at the current weights and adds it (after the attack, before the forward)."""
        super().before_step(step)
        if not self.awp_active(step.epoch):
            return
        if self._proxy is None:
            self._proxy = proxy_copy(step.model)
        v = weight_perturbation(step.model, self._proxy, lambda proxy: self.proxy_loss(proxy, step),
                                self.config.gamma, step.all_reduce_sum)  # type: ignore[attr-defined]
        self._saved = perturb(v, keep_original=not step.synced)

    def after_optimizer_step(self, step: StepContext) -> None:
        """Removes ``v``, keeping the optimizer's update."""
        restore(self._saved)
        self._saved = []
        super().after_optimizer_step(step)


def check_awp(gamma: float, warmup_epochs: int) -> None:
    """Range checks shared by the AWP configs (one-line :class:`ConfigError`)."""
    if gamma < 0:
        raise ConfigError(f"method.gamma must be >= 0, got {gamma}")
    if warmup_epochs < 0:
        raise ConfigError(f"method.warmup_epochs must be >= 0, got {warmup_epochs}")


@dataclass(frozen=True)
class ATAWPConfig(ATConfig):
    """AT-AWP hyper-parameters.

    Attributes:
        gamma: size of each layer's weight perturbation relative to the layer's weight norm;
            1e-2, the official AT-AWP default (csdongxian/AWP AT_AWP/train_cifar10.py:162,
            ``--awp-gamma 0.01``), which its released WRN-34-10 log also records
            (``awp_size=0.01``); 5e-3 is TRADES-AWP's (trades_AWP/train_trades_cifar.py:60).
        warmup_epochs: epochs trained without AWP first (official AT-AWP: 0).
    """

    name: str = "at_awp"
    gamma: float = 1e-2
    warmup_epochs: int = 0

    def validate(self) -> None:
        check_awp(self.gamma, self.warmup_epochs)


@METHODS.register("at_awp")
class ATAWP(WeightPerturbation, AT):
    """AT with adversarial weight perturbation: ``CE(f_{w+v}(x'), y)``, ``v`` maximising the same loss."""

    config_class = ATAWPConfig
    attack_defaults = {"bn_mode": "train", "random_start": "uniform"}
    summary = "AT with adversarial weight perturbation (Wu et al. 2020), CE(f_{w+v}(x'), y)"
    config: ATAWPConfig
