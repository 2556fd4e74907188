"""Standard (non-adversarial) training: the clean baseline.

Loss: ``CE(f(x), y)``. No attack. Its models are the natural starting point that
ARREST fine-tunes, and its PGD accuracy (near 0) is the sanity check of the evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        logits = model(x)
        return LossOutput(parts={"ce_clean": F.cross_entropy(logits, y)}, logits=logits)
