"""Asym-TRADES: TRADES made asymmetric with AR-AT's fixes (Waseda et al., "Rethinking
Invariance Regularization in Adversarial Training to Improve Robustness-Accuracy
Trade-off", ICLR 2025, in its discussion of distillation-based defences).

Loss::

    a * CE(f(x'), y) + b * CE(f_aux(x), y) + gamma * (1/B) sum_i KL(sg(p_aux(x_i)) || p(x'_i))

AR-AT's classification terms and split-BN (``f_aux`` = the ``clean`` BN route) with
TRADES's logit KL, the clean auxiliary distribution being a fixed (detached) target.
No predictor: a bottleneck on logits makes no sense. The toggles that make sense carry
over from AR-AT: ``stop_grad`` (off: gradient also flows into ``p_aux(x)``, as in TRADES),
``split_bn`` (off: ``f_aux`` is ``f``) and ``auto_balance`` (``a = Acc``, ``b = 1 - Acc``
of ``f_aux``, measured at each epoch start).

The paper states neither gamma, the CE weights nor the training attack for Asym-TRADES:
atzoo uses gamma 6 (TRADES's beta), auto-balance on, and AR-AT's CE-PGD-10 on the ``adv``
route in train mode. The deployed model is the ``adv`` route as a plain network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.methods.arat import TwoBranchConfig, TwoBranchMethod
from atzoo.methods.base import LossOutput
from atzoo.registry import METHODS


@dataclass(frozen=True)
class AsymTRADESConfig(TwoBranchConfig):
    """Asym-TRADES hyper-parameters (atzoo defaults; the paper does not state them).

    Attributes:
        gamma: weight of the batch-mean KL term (TRADES's beta).
    """

    name: str = "asym_trades"
    gamma: float = 6.0


def asymmetric_kl(logits_adv: Tensor, logits_clean: Tensor, *, stop_grad: bool = True) -> Tensor:
    """``(1/B) sum_i KL(sg(p_aux(x_i)) || p(x'_i))`` from the two branches' logits.

    Args:
        logits_adv: main-branch logits on the adversarial input.
        logits_clean: auxiliary-branch logits on the clean input (the target).
        stop_grad: detach the target distribution.
    """
    log_target = F.log_softmax(logits_clean.float(), dim=1)
    if stop_grad:
        log_target = log_target.detach()
    log_q = F.log_softmax(logits_adv.float(), dim=1)
    return F.kl_div(log_q, log_target, reduction="batchmean", log_target=True)


@METHODS.register("asym_trades")
class AsymTRADES(TwoBranchMethod):
    """Asym-TRADES: ``a CE(f(x'), y) + b CE(f_aux(x), y) + gamma KL(sg(p_aux(x)) || p(x'))``."""

    config_class = AsymTRADESConfig
    regularizers = ("kl",)
    config: AsymTRADESConfig
    log_prefix = "asym_trades"
    summary = "Asym-TRADES (AR-AT paper): TRADES KL to a detached split-BN clean target, auto-balanced CE"

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """The paper does not state Asym-TRADES's training attack or schedule; atzoo uses
        those of its parent AR-AT (CE-PGD-10 at 8/255, step 2/255, train mode; lr 0.1 with
        0.02 in epoch 1, wd 5e-4, 100 epochs, x0.1 from 0-based epochs 76 and 91 as AR-AT's
        official ``CustomLR``) and says so in the card."""
        attack = {"norm": "linf", "eps": 8 / 255, "step_size": 2 / 255, "steps": 10, "random_start": "uniform"}
        optim = {"epochs": 100, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "milestones": [76, 91]}
        return {"attack": {**attack, "bn_mode": "train"},
                "optim": {**optim, "schedule": "piecewise", "warmup_epochs": 1, "warmup_lr": 0.02}}

    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        assert x_adv is not None, "Asym-TRADES needs the adversarial batch"
        logits_adv, logits_clean, _, _ = self.forward_branches(model, x, x_adv)
        parts = self.classification_parts(logits_adv, logits_clean, y)
        parts["kl"] = self.config.gamma * asymmetric_kl(logits_adv, logits_clean, stop_grad=self.config.stop_grad)
        a, b = self.ce_weights()
        return LossOutput(parts=parts, logits=logits_adv, stats={"a": a, "b": b})
