"""Andriushchenko and Flammarion, "Understanding and Improving Fast Adversarial Training", NeurIPS 2020.

GradAlign: FGSM training plus a gradient-alignment regulariser (the paper's Eq. 6)::

    loss = CE(f(x'), y) + lam * (1 - cos( grad_x CE(f(x), y), grad_x CE(f(x + eta), y) ))
    x'   = clip_[0,1]( x + Proj_eps( alpha * sign(grad_x CE(f(x), y)) ) )      eta ~ U[-eps, eps]^d

``cos`` is the cosine of the two input gradients of each example, averaged over the batch.
The second gradient is taken with ``create_graph=True`` so that the regulariser's own
gradient with respect to the weights -- a second-order term, "double backpropagation" --
reaches the optimizer; the first is a constant (detached), as in the official code.
The first gradient is the FGSM attack's own gradient (no extra pass): with the paper's
zero initialisation (``attack.random_start=none``) the attack's gradient is taken at ``x``.
Examples whose either gradient is exactly zero are left out of the mean (official code).

Setting (paper Sec. 5 and App. C; official ``train.py``): PreAct ResNet-18, batch 128,
30 epochs, cyclic lr peaking at 0.2, SGD momentum 0.9, weight decay 5e-4; FGSM with zero
initialisation and step ``alpha = eps`` (``--attack_init zero --fgsm_alpha 1.0``),
``lam = 0.2`` at eps 8/255 (the paper scales ``lam`` with eps). Cost: the regulariser adds
one forward and a double backward, about 3x FGSM's step (the paper's Sec. 5 reports the
same order).

Deviation: the official cyclic schedule peaks at 2/5 of the steps; atzoo's ``onecycle`` at 30%.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.attacks.pgd import input_gradient
from atzoo.config import MethodConfig
from atzoo.errors import ConfigError
from atzoo.methods.base import LossOutput, Method, MethodContext
from atzoo.methods.fgsm_rs import fast_at_optim, require_single_step
from atzoo.registry import METHODS


@dataclass(frozen=True)
class GradAlignConfig(MethodConfig):
    """GradAlign hyper-parameters.

    Attributes:
        lam: weight of ``1 - cos`` (paper: 0.2 at eps 8/255; 0 is plain FGSM training).
    """

    name: str = "grad_align"
    lam: float = 0.2

    def validate(self) -> None:
        if self.lam < 0:
            raise ConfigError(f"method.lam must be >= 0, got {self.lam}")


def gradient_cosine(g1: Tensor, g2: Tensor) -> Tensor:
    """Per-example cosine of two input gradients, over the examples where both are non-zero.

    Returns the mean cosine (a 0-dim tensor; 1.0 when no example has two non-zero gradients,
    so that the regulariser is then 0).
    """
    n1 = g1.flatten(1).norm(dim=1)
    n2 = g2.flatten(1).norm(dim=1)
    keep = (n1 > 0) & (n2 > 0)
    if not bool(keep.any()):
        return g2.sum() * 0 + 1.0
    cos = (g1.flatten(1)[keep] * g2.flatten(1)[keep]).sum(dim=1) / (n1[keep] * n2[keep])
    return cos.mean()


def noisy_gradient(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """``grad_x CE(f(x + eta), y)`` with ``eta ~ U[-eps, eps]^d``, differentiable in the weights
    (``create_graph=True``: the double backpropagation of the regulariser)."""
    eta = (2 * torch.rand_like(x) - 1) * eps
    point = (x.detach() + eta).clamp(0, 1).requires_grad_(True)
    with torch.enable_grad():
        logits = model(point)
        # at least float32 (autocast may give bf16/fp16 logits); float64 stays float64
        loss = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), y)
        (grad,) = torch.autograd.grad(loss, point, create_graph=True)
    return grad


@METHODS.register("grad_align")
class GradAlign(Method):
    """FGSM training + ``lam * (1 - cos(grad at x, grad at x + eta))`` (double backprop)."""

    config_class = GradAlignConfig
    attack_defaults = {"bn_mode": "train", "random_start": "none"}
    summary = "GradAlign (Andriushchenko & Flammarion 2020): FGSM + lam (1 - cos(grad_x, grad_{x+eta}))"
    regularizers = ("align",)
    single_step = True
    config: GradAlignConfig

    def __init__(self, config: MethodConfig, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        require_single_step("grad_align", ctx)
        if ctx.attack.norm != "linf":
            raise ConfigError(f"grad_align is defined for attack.norm=linf only, got {ctx.attack.norm}")
        self._attack_grad: Tensor | None = None

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """The paper's CIFAR-10 setting: eps 8/255, FGSM alpha = eps from zero; 30 epochs, cyclic lr 0.2."""
        return {"attack": {"norm": "linf", "eps": 8 / 255, "step_size": 8 / 255, "steps": 1, "random_start": "none"},
                "optim": fast_at_optim(30, 0.2)}

    def attack(self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, y: Tensor) -> Tensor:
        """FGSM from ``x`` (or a uniform start with ``attack.random_start=uniform``); keeps its gradient."""
        a = self.ctx.attack
        eps = a.eps
        step = float(a.settings.get("step_size") or eps)
        x0 = x.detach().float()
        start = x0
        if a.settings.get("random_start") == "uniform":
            start = (x0 + (2 * torch.rand_like(x0) - 1) * eps).clamp(0, 1)
        grad = input_gradient(model, start, y, mode=a.mode)
        self._attack_grad = grad
        delta = (start + step * grad.sign() - x0).clamp(-eps, eps)
        return (x0 + delta).clamp(0, 1).to(dtype=x.dtype)

    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        assert x_adv is not None and self._attack_grad is not None, "GradAlign needs its FGSM batch and gradient"
        logits = model(x_adv)
        parts = {"ce_adv": F.cross_entropy(logits, y)}
        stats: dict[str, float] = {}
        if self.config.lam > 0:
            cos = gradient_cosine(self._attack_grad, noisy_gradient(model, x, y, self.ctx.attack.eps))
            parts["align"] = self.config.lam * (1.0 - cos)
            stats["grad_cos"] = float(cos.detach())
        self._attack_grad = None
        return LossOutput(parts=parts, logits=logits, stats=stats)
