"""Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified Examples", ICLR 2020.

Loss (MART), with ``p = softmax(f(x))``, ``p' = softmax(f(x'))`` and the strongest
wrong class ``y~_i = argmax_{k != y_i} p'_{i,k}``::

    BCE    = CE(f(x'), y) + (1/B) * sum_i -log(1.0001 - p'_{i,y~_i} + 1e-12)
    robust = (1/B) * sum_i KL(p_i || p'_i) * (1.0000001 - p_{i,y_i})
    L      = BCE + beta * robust

``x'`` is CE-PGD (10 steps) from ``x + 0.001 * N(0, I)`` with the model in eval mode;
the loss is computed in train mode. Nothing is detached: the weight
``(1.0000001 - p_y(x))`` carries gradient into the clean forward, as in the official code.

The constants are the official code's (github.com/YisenWang/MART): ``1.0001`` and
``1e-12`` inside the boosting log, and the KL uses ``log(p' + 1e-12)`` for ``log p'``.

Defaults: beta 6 for WideResNets, 5 for ResNet-18 (the paper's two settings);
``beta: null`` picks by ``model.name`` (5 for ``resnet18`` and ``preact_resnet18``,
6 otherwise).

Deviations from the official code:

* ``y~`` is ``argmax`` over the wrong classes; the official code takes the top two of
  ``argsort`` and drops ``y``. Both give the same class except on exact ties.
* The ``p log p`` part of the KL is computed as ``p * log_softmax(f(x))`` (same value as
  ``KLDivLoss``'s ``xlogy(p, p)``) so that its gradient stays finite where ``p``
  underflows to zero.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.config import MethodConfig
from atzoo.errors import ConfigError
from atzoo.methods.base import LossOutput, Method
from atzoo.registry import METHODS

if TYPE_CHECKING:
    from atzoo.config import RunConfig

def resnet18_setting(model_name: str) -> bool:
    """Whether the paper's ResNet-18 setting (beta 5, its schedule) applies: the model
    declared ``family="resnet18"`` where it is registered (:func:`atzoo.models.layers.architecture`)."""
    from atzoo.models import architecture_family

    return architecture_family(model_name) == "resnet18"


def strongest_wrong_class(probs_adv: Tensor, y: Tensor) -> Tensor:
    """``argmax_{k != y_i} p'_{i,k}`` for every sample (labels of shape ``(B,)``)."""
    masked = probs_adv.detach().scatter(1, y[:, None], float("-inf"))
    return masked.argmax(dim=1)


def mart_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> dict[str, Tensor]:
    """MART loss parts: ``bce_adv`` (boosted CE) and ``robust_kl`` (beta * weighted KL).

    Args:
        logits_clean: ``f(x)`` from the train-mode forward (keeps its graph).
        logits_adv: ``f(x')`` from the train-mode forward (keeps its graph).
        y: labels ``(B,)``.
        beta: weight of the robust term (paper: 6 for WRN-34-10, 5 for ResNet-18).

    Returns:
        ``{"bce_adv": ..., "robust_kl": ...}``, already weighted; the loss is their sum.
    """
    probs_adv = F.softmax(logits_adv, dim=1)
    wrong = strongest_wrong_class(probs_adv, y)
    p_wrong = probs_adv.gather(1, wrong[:, None]).squeeze(1)
    bce = F.cross_entropy(logits_adv, y) - torch.log(1.0001 - p_wrong + 1e-12).mean()

    probs_clean = F.softmax(logits_clean, dim=1)
    kl = (probs_clean * (F.log_softmax(logits_clean, dim=1) - torch.log(probs_adv + 1e-12))).sum(dim=1)
    weight = 1.0000001 - probs_clean.gather(1, y[:, None]).squeeze(1)  # not detached, as in the paper
    robust = (kl * weight).mean()
    return {"bce_adv": bce, "robust_kl": beta * robust}


@dataclass(frozen=True)
class MARTConfig(MethodConfig):
    """MART hyper-parameters.

    Attributes:
        beta: weight of the misclassification-aware KL term; ``None`` resolves from
            ``model.name``: 5 for ResNet-18 models, 6 otherwise (the paper's settings).
    """

    name: str = "mart"
    beta: Optional[float] = None

    def resolve(self, run: "RunConfig") -> "MARTConfig":
        if self.beta is not None:
            return self
        return dataclasses.replace(self, beta=5.0 if resnet18_setting(run.model.name) else 6.0)

    def validate(self) -> None:
        if self.beta is not None and self.beta < 0:
            raise ConfigError(f"method.beta must be >= 0, got {self.beta}")


@METHODS.register("mart")
class MART(Method):
    """MART: boosted CE on ``x'`` plus a KL term weighted by ``1 - p_y(x)``."""

    config_class = MARTConfig
    regularizers = ("robust_kl",)
    attack_defaults = {"bn_mode": "eval", "random_start": "normal"}
    summary = "MART (Wang et al. 2020), BCE(f(x'), y) + beta KL(p(x) || p(x')) (1 - p_y(x))"

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """The official code's settings: CE-PGD-10, eps 0.031, step 0.007, start
        ``x + 0.001 N(0, I)``; ResNet-18: lr 0.01, wd 3.5e-3, 120 epochs, x0.1 from epochs
        75, 90 and 100 (1-based); WideResNet: lr 0.1, wd 7e-4, 90 epochs, x0.1 from 75 and 90."""
        resnet = resnet18_setting(model)
        optim = ({"epochs": 120, "lr": 0.01, "weight_decay": 3.5e-3, "milestones": [74, 89, 99]} if resnet
                 else {"epochs": 90, "lr": 0.1, "weight_decay": 7e-4, "milestones": [74, 89]})
        return {
            "attack": {"norm": "linf", "eps": 0.031, "step_size": 0.007, "steps": 10, "random_start": "normal"},
            "optim": {**optim, "momentum": 0.9, "schedule": "piecewise", "warmup_lr": None},
        }
    config: MARTConfig

    def attack(self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, y: Tensor) -> Tensor:
        return self.training_pgd(model, x, y, loss="ce")

    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        assert x_adv is not None, "MART needs the adversarial batch"
        beta = self.config.beta  # set per model by MARTConfig.resolve (create_method resolves)
        logits_clean = model(x)
        logits_adv = model(x_adv)
        parts = mart_loss(logits_clean, logits_adv, y, float(beta))
        return LossOutput(parts=parts, logits=logits_adv)
