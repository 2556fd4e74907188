"""Wu, Xia and Wang, "Adversarial Weight Perturbation Helps Robust Generalization", NeurIPS 2020: TRADES-AWP.

TRADES (Zhang et al., 2019) with adversarial weight perturbation::

    min_w  max_{v in V(w)}  CE(f_{w+v}(x), y) + beta * (1/B) sum_i KL( p_{w+v}(x_i) || p_{w+v}(x'_i) )
    V(w) = { v : ||v_l|| <= gamma * ||w_l|| for every layer l }

``x'`` is TRADES's KL-PGD-10 at the current weights (eval mode, start ``x + 0.001 N(0, I)``).
The weight perturbation is the one of :mod:`atzoo.methods.at_awp` with the TRADES loss as
the loss to increase: one gradient step of ``CE(f(x), y) + beta * KL(p(x) || p(x'))`` at a
proxy copy in train mode, rescaled per layer to ``gamma * ||w_l||``, added before the
training forward and removed after the optimizer step.

Defaults from the official code (github.com/csdongxian/AWP, ``trades_AWP``): gamma 5e-3,
beta 6, AWP from the official epoch 10 on. The official loop counts epochs from 1 and tests
``epoch >= 10``, so its first nine epochs train without AWP: ``warmup_epochs = 9`` with
atzoo's 0-based epochs.

Deviations from the official code: those of :mod:`atzoo.methods.at_awp` (the direction is
the gradient itself, not a proxy SGD step whose learning rate -- 0.1 here -- cancels in the
rescaling; the optimizer's change is carried to the saved weights) and those of
:mod:`atzoo.methods.trades` (one clean forward serves both loss terms, in the proxy as in
the training loss; the official code runs the proxy on the clean batch twice, which gives
the same value in train mode).
"""

from __future__ import annotations

from dataclasses import dataclass

from atzoo.methods.at_awp import WeightPerturbation, check_awp
from atzoo.methods.trades import TRADES, TRADESConfig
from atzoo.registry import METHODS


@dataclass(frozen=True)
class TRADESAWPConfig(TRADESConfig):
    """TRADES-AWP hyper-parameters.

    Attributes:
        beta: weight of the KL regulariser (TRADES's 1/lambda); 6 on CIFAR.
        gamma: size of each layer's weight perturbation relative to the layer's weight norm.
        warmup_epochs: epochs trained without AWP first (official: the first nine).
    """

    name: str = "trades_awp"
    gamma: float = 5e-3
    warmup_epochs: int = 9

    def validate(self) -> None:
        super().validate()
        check_awp(self.gamma, self.warmup_epochs)


@METHODS.register("trades_awp")
class TRADESAWP(WeightPerturbation, TRADES):
    """TRADES with adversarial weight perturbation; ``v`` maximises the TRADES loss."""

    config_class = TRADESAWPConfig
    summary = "TRADES with adversarial weight perturbation (Wu et al. 2020), CE + beta KL at w + v"
    config: TRADESAWPConfig
