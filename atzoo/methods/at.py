"""Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.

Loss: ``CE(f(x'), y)`` with ``x' = PGD-10`` on the cross-entropy from a uniform random
start in the eps-ball (L-inf eps 8/255, step 2/255 on CIFAR).

Deviation from the official code: the official TensorFlow code (and its common PyTorch
port) attacks with the model in train mode; MadryLab/robustness attacks in eval mode.
The authors saw little difference. atzoo attacks in eval mode by default;
``attack.bn_mode=train`` gives the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.config import MethodConfig
from atzoo.methods.base import LossOutput, Method
from atzoo.registry import METHODS


@dataclass(frozen=True)
class ATConfig(MethodConfig):
    """PGD-AT has no hyper-parameters beyond the training attack (``attack.*``)."""

    name: str = "at"


@METHODS.register("at")
class AT(Method):
    """PGD adversarial training: ``min_theta E[max_{||d|| <= eps} CE(f(x + d), y)]``."""

    config_class = ATConfig
    attack_defaults = {"bn_mode": "eval", "random_start": "uniform"}
    summary = "PGD adversarial training (Madry et al. 2018), CE(f(x'), y)"
    takes_label_smoothing = True  # optim.label_smoothing smooths its classification CE

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """Madry et al.'s CIFAR setting: PGD-7 (eps 8/255, step 2/255, uniform start);
        SGD lr 0.1, momentum 0.9, wd 2e-4, batch 128 for 80k steps (~200 epochs), x0.1
        at 40k and 60k steps (epochs 100 and 150), no warm-up. The attack runs in eval
        mode (atzoo's default, see the module docstring)."""
        return {
            "attack": {"norm": "linf", "eps": 8 / 255, "step_size": 2 / 255, "steps": 7, "random_start": "uniform"},
            "optim": {"epochs": 200, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4,
                      "schedule": "piecewise", "milestones": [100, 150], "warmup_lr": None},
        }

    def attack(self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, y: Tensor) -> Tensor:
        return self.training_pgd(model, x, y, loss="ce")

    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        assert x_adv is not None, "AT needs the adversarial batch"
        logits = model(x_adv)
        return LossOutput(parts={"ce_adv": F.cross_entropy(logits, y, label_smoothing=self.ctx.label_smoothing)}, logits=logits)
