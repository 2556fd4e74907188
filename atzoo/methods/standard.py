"""Standard (non-adversarial) training: the clean baseline.

Loss: ``CE(f(x), y)``. No attack. Its models are the natural starting point that
ARREST fine-tunes, and its PGD accuracy (near 0) is the sanity check of the evaluator.
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
class StandardConfig(MethodConfig):
    """Standard training has no hyper-parameters of its own."""

    name: str = "standard"


@METHODS.register("standard")
class Standard(Method):
    """Empirical risk minimisation on clean inputs: ``CE(f(x), y)``."""

    config_class = StandardConfig
    summary = "clean training, CE(f(x), y); the non-robust baseline"
    takes_label_smoothing = True  # optim.label_smoothing smooths its classification CE

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """The clean baseline as the AR-AT paper trains its models: SGD lr 0.1 (0.02 in the
        first epoch), momentum 0.9, wd 5e-4, 100 epochs, x0.1 from epochs 75 and 90."""
        return {"optim": {"epochs": 100, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "piecewise",
                          "milestones": [75, 90], "warmup_epochs": 1, "warmup_lr": 0.02}}

    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        logits = model(x)
        return LossOutput(parts={"ce_clean": F.cross_entropy(logits, y, label_smoothing=self.ctx.label_smoothing)}, logits=logits)
