"""de Jorge et al., "Make Some Noise: Reliable and Efficient Single-Step Adversarial Training", NeurIPS 2022.

N-FGSM (the paper's Alg. 1)::

    eta ~ U[-k, k]^d                      k = noise * eps   (paper: k = 2 * eps)
    x'  = clip_[0,1]( x + eta + alpha * sign(grad_x CE(f(x + eta), y)) )    alpha = eps
    loss = CE(f(x'), y)

The perturbation is **not** projected back to the eps-ball: ``||x' - x||_inf`` reaches
``k + alpha = 3 * eps``. The paper argues (Sec. 4) that the stronger noise, not the
projection, is what avoids catastrophic overfitting, and that clipping the step back
re-introduces it. ``method.clip`` (a multiple of eps) gives the clipped variant of its
ablation; ``null`` is the paper's default (``--clip -1`` in the official ``train.py``).

Setting (official ``train.py`` defaults and README command): PreAct ResNet-18, batch 128,
SGD momentum 0.9, weight decay 5e-4, cyclic lr peaking at 0.2, 30 epochs, eps 8/255,
alpha 8/255, ``--unif 2``; the model is in train mode during the attack.

Deviation: the official cyclic schedule is triangular (peak at half the steps); atzoo's
``onecycle`` peaks at 30%.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn

from atzoo.attacks.pgd import noisy_fgsm
from atzoo.config import MethodConfig
from atzoo.errors import ConfigError
from atzoo.methods.at import AT
from atzoo.methods.base import MethodContext
from atzoo.methods.fgsm_rs import fast_at_optim, require_single_step
from atzoo.registry import METHODS


@dataclass(frozen=True)
class NFGSMConfig(MethodConfig):
    """N-FGSM hyper-parameters (both multiples of ``attack.eps``).

    Attributes:
        noise: half-width of the uniform noise, ``k = noise * eps`` (paper: 2).
        clip: clip the perturbation to ``[-clip * eps, clip * eps]``; None (the paper): no clipping.
    """

    name: str = "n_fgsm"
    noise: float = 2.0
    clip: Optional[float] = None

    def validate(self) -> None:
        if self.noise < 0:
            raise ConfigError(f"method.noise must be >= 0 (a multiple of eps), got {self.noise}")
        if self.clip is not None and self.clip <= 0:
            raise ConfigError(f"method.clip must be > 0 (a multiple of eps) or null (no clipping), got {self.clip}")


@METHODS.register("n_fgsm")
class NFGSM(AT):
    """FGSM step of eps from a uniform noise of 2 eps, without projection; CE on the result."""

    config_class = NFGSMConfig
    attack_defaults = {"bn_mode": "train", "random_start": "none"}
    summary = "N-FGSM (de Jorge et al. 2022): noise U[-2eps, 2eps], FGSM step eps, no projection"
    single_step = True
    config: NFGSMConfig

    def __init__(self, config: MethodConfig, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        require_single_step("n_fgsm", ctx)
        if ctx.attack.norm != "linf":
            raise ConfigError(f"n_fgsm is defined for attack.norm=linf only, got {ctx.attack.norm}")

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """de Jorge et al.'s CIFAR-10 setting: eps 8/255, alpha 8/255; 30 epochs, cyclic lr up to 0.2."""
        return {"attack": {"norm": "linf", "eps": 8 / 255, "step_size": 8 / 255, "steps": 1, "random_start": "none"},
                "optim": fast_at_optim(30, 0.2)}

    def attack(self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, y: Tensor) -> Tensor:
        a = self.ctx.attack
        eps = a.eps
        step = float(a.settings.get("step_size") or eps)
        clip = self.config.clip * eps if self.config.clip is not None else None
        return noisy_fgsm(model, x, y, eps=eps, step_size=step, noise=self.config.noise * eps, clip=clip, mode=a.mode)
