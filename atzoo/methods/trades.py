"""Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019.

Loss (TRADES), with ``p = softmax(f(.))`` and ``B`` the batch size::

    L = CE(f(x), y) + beta * (1/B) * sum_i KL(p(x_i) || p(x'_i))

where ``x'`` maximises the KL term: 10 steps of sign-gradient ascent on
``KL(p(x) || p(x'))`` from ``x + 0.001 * N(0, I)``, projected onto the eps-ball and
[0, 1], with the model in **eval** mode. The loss is computed in train mode and its
gradient flows through both ``p(x)`` and ``p(x')`` (nothing is detached).

Deviations from the official code (github.com/yaodongyu/TRADES):

* The attack's clean distribution ``p(x)`` is computed once per batch (eval mode, no
  gradient) and passed to PGD; the official code recomputes ``model(x_natural)`` at
  every attack step. ``p(x)`` does not change during the attack, so the adversarial
  examples are the same and 9 forward passes per batch are saved.
* The loss uses one train-mode forward of the clean batch for both the CE and the KL
  term; the official code runs ``model(x_natural)`` twice. The loss and its gradient
  are identical; the BatchNorm running statistics see the clean batch once instead of
  twice per step.
* ``sum p (log p - log q)`` is computed from ``log_softmax`` of both logits (same value
  as ``KLDivLoss(log_softmax(f(x')), softmax(f(x)))``) so that its gradient stays
  finite where a probability underflows to zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.config import MethodConfig
from atzoo.errors import ConfigError
from atzoo.methods.base import LossOutput, Method
from atzoo.registry import METHODS


def kl_batchmean(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """``(1/B) * sum_i KL(softmax(logits_p_i) || softmax(logits_q_i))``, differentiable in both.

    Args:
        logits_p: logits of the reference distribution ``p`` (TRADES: clean), ``(B, K)``.
        logits_q: logits of the approximating distribution ``q`` (adversarial), ``(B, K)``.
    """
    log_p = F.log_softmax(logits_p, dim=1)
    log_q = F.log_softmax(logits_q, dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def trades_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float, *,
                label_smoothing: float = 0.0) -> dict[str, Tensor]:
    """TRADES loss parts: ``ce_clean = CE(f(x), y)`` and ``kl = beta * KL(p(x) || p(x'))``.

    Args:
        logits_clean: ``f(x)`` from the train-mode forward (keeps its graph).
        logits_adv: ``f(x')`` from the train-mode forward (keeps its graph).
        y: labels ``(B,)``.
        beta: weight of the KL regulariser (paper: 6).
        label_smoothing: smoothing of the clean CE only (``optim.label_smoothing``; Wang et al.
            2023 use 0.1: ``SmoothCrossEntropyLoss`` on the natural logits, the KL unchanged).

    Returns:
        ``{"ce_clean": ..., "kl": ...}``, already weighted; the loss is their sum.
    """
    return {
        "ce_clean": F.cross_entropy(logits_clean, y, label_smoothing=label_smoothing),
        "kl": beta * kl_batchmean(logits_clean, logits_adv),
    }


def clean_distribution(model: nn.Module, x: Tensor, mode: str) -> Tensor:
    """``p(x)`` for the KL attack: one forward in the attack's mode, without gradient.

    Computed once per batch and handed to PGD as ``clean_probs`` (TRADES, LBGAT).
    """
    from atzoo.attacks import attack_mode

    with torch.no_grad(), attack_mode(model, mode, None):
        return F.softmax(model(x), dim=1)


@dataclass(frozen=True)
class TRADESConfig(MethodConfig):
    """TRADES hyper-parameters.

    Attributes:
        beta: weight of the KL regulariser (1/lambda in the paper); 6 on CIFAR.
    """

    name: str = "trades"
    beta: float = 6.0

    def validate(self) -> None:
        if self.beta < 0:
            raise ConfigError(f"method.beta must be >= 0, got {self.beta}")


@METHODS.register("trades")
class TRADES(Method):
    """TRADES: ``CE(f(x), y) + beta * KL(p(x) || p(x'))`` with a KL-PGD training attack."""

    config_class = TRADESConfig
    regularizers = ("kl",)
    attack_defaults = {"bn_mode": "eval", "random_start": "normal"}
    summary = "TRADES (Zhang et al. 2019), CE(f(x), y) + beta KL(p(x) || p(x'))"
    takes_label_smoothing = True  # optim.label_smoothing smooths its classification CE

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """The official CIFAR-10 settings: KL-PGD-10, eps 0.031, step 0.007, start
        ``x + 0.001 N(0, I)``; SGD lr 0.1, momentum 0.9, wd 2e-4, 76 epochs, x0.1 from the
        75th epoch (``epoch >= 75`` counted from 1, i.e. 0-based milestone 74), no warm-up."""
        return {
            "attack": {"norm": "linf", "eps": 0.031, "step_size": 0.007, "steps": 10, "random_start": "normal",
                       "start_std": 0.001},
            "optim": {"epochs": 76, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "schedule": "piecewise",
                      "milestones": [74], "warmup_lr": None},
        }
    config: TRADESConfig

    def attack(self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, y: Tensor) -> Tensor:
        clean_probs = clean_distribution(model, x, self.ctx.attack.mode)
        return self.training_pgd(model, x, y, loss="kl", clean_probs=clean_probs)

    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        assert x_adv is not None, "TRADES needs the adversarial batch"
        logits_clean = model(x)
        logits_adv = model(x_adv)
        parts = trades_loss(logits_clean, logits_adv, y, self.config.beta, label_smoothing=self.ctx.label_smoothing)
        return LossOutput(parts=parts, logits=logits_adv)
