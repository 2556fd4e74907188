"""Wong, Rice and Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020.

FGSM-RS (the paper's "FGSM adversarial training with random initialization", Alg. 3)::

    delta ~ U[-eps, eps]^d
    delta <- Proj_{[-eps, eps]}( delta + alpha * sign(grad_delta CE(f(x + delta), y)) )
    loss  =  CE(f(clip_[0,1](x + delta)), y)

with ``alpha = 1.25 * eps`` (10/255 at eps 8/255, Sec. 4 and Fig. 2: larger steps lead to
catastrophic overfitting). In atzoo this is the run's training attack with one step
(``attack.steps=1``, ``attack.step_size=10/255``, ``attack.random_start=uniform``) and AT's
loss, so it runs on the one attack module. Two passes per step instead of AT's eleven.

Setting (official ``CIFAR10/train_fgsm.py`` defaults): PreAct ResNet-18, batch 128, SGD
momentum 0.9, weight decay 5e-4, a cyclic learning rate peaking at 0.2, 15 epochs, the
model in train mode during the attack (``attack.bn_mode=train``).

Deviation: the official cyclic schedule is triangular (0 -> 0.2 at half the steps -> 0);
atzoo's ``optim.schedule=onecycle`` rises from lr/25 to lr over the first 30% and falls
linearly to ~0. The official code trains in mixed precision (apex O2); atzoo's default is
fp32 (``run.precision=bf16`` on a GPU gives the fast variant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atzoo.config import MethodConfig
from atzoo.errors import ConfigError
from atzoo.methods.at import AT
from atzoo.methods.base import MethodContext
from atzoo.registry import METHODS


@dataclass(frozen=True)
class FGSMRSConfig(MethodConfig):
    """FGSM-RS has no hyper-parameters beyond its one-step training attack (``attack.*``)."""

    name: str = "fgsm_rs"


def require_single_step(method: str, ctx: MethodContext) -> None:
    """A single-step method's training attack must take one step.

    Raises:
        ConfigError: ``attack.steps`` is not 1 (the run would be PGD-AT under another name).
    """
    steps = ctx.attack.settings.get("steps")
    if steps is not None and int(steps) != 1:
        raise ConfigError(f"{method} is a single-step method: attack.steps must be 1, got {steps}")


def fast_at_optim(epochs: int, lr: float) -> dict[str, Any]:
    """The fast-AT papers' optimiser: SGD momentum 0.9, weight decay 5e-4, a cyclic
    (one-cycle) learning rate peaking at ``lr``, no warm-up, no milestones."""
    return {"epochs": epochs, "lr": lr, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle",
            "milestones": [], "warmup_lr": None}


@METHODS.register("fgsm_rs")
class FGSMRS(AT):
    """FGSM from a uniform random start, step 1.25 * eps, projected; CE on the result."""

    config_class = FGSMRSConfig
    attack_defaults = {"bn_mode": "train", "random_start": "uniform"}
    summary = "FGSM-RS fast AT (Wong et al. 2020): uniform start, one step of 1.25 eps, CE(f(x'), y)"
    single_step = True

    def __init__(self, config: MethodConfig, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        require_single_step("fgsm_rs", ctx)

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """Wong et al.'s CIFAR-10 setting (official ``train_fgsm.py``): eps 8/255, alpha
        10/255, uniform start; 15 epochs, cyclic lr up to 0.2."""
        return {"attack": {"norm": "linf", "eps": 8 / 255, "step_size": 10 / 255, "steps": 1,
                           "random_start": "uniform"},
                "optim": fast_at_optim(15, 0.2)}
