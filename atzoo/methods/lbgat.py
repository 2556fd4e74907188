"""Cui et al., "Learnable Boundary Guided Adversarial Training", ICCV 2021.

Loss (LBGAT), with the robust student ``f``, the natural teacher ``g`` and
``p_f = softmax(f(.))``::

    L = MSE(f(x'), g(x)) + CE(g(x), y) + beta * (1/B) * sum_i KL(p_f(x_i) || p_f(x'_i))

``MSE`` is the mean over all ``B x K`` logits. ``x'`` is TRADES's KL-PGD on the student
(eval mode, start ``x + 0.001 * N(0, I)``). The teacher is trained **jointly** from
scratch by the same optimiser and stays in train mode. Nothing is detached: the MSE
term pulls the teacher toward the student's adversarial logits as well.
``beta = 0`` is "LBGAT0" (the method's default here, as in the reference repository's
released script and models) and ``beta = 6`` is "LBGAT6"; see the two recipes.

The exported model is the student alone; the teacher lives in ``modules["teacher"]``,
is saved in checkpoints and can be initialised from ``teacher_checkpoint``.

Deviations from the official code (github.com/dvlab-research/LBGAT):

* The teacher is atzoo's registered architecture ``teacher`` (default ``resnet18``,
  atzoo's standard CIFAR ResNet-18). The reference's ``ResNet18_cifar`` teacher uses
  stride 1 in its second stage (final feature map 8x8 instead of 4x4, about 4x the
  compute in the last three stages); the parameter shapes are the same.
* The teacher is built without atzoo's input-normalisation layer (as in the reference,
  where neither network normalises).
* The attack computes ``p_f(x)`` once per batch instead of at every step (same
  adversarial example; see ``atzoo.methods.trades``).
* With ``beta = 0`` the student's clean forward, which the reference runs anyway (and
  which updates the student's BatchNorm running statistics), runs without building a
  graph, since its loss weight is zero; the ``kl`` part is then left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.config import MethodConfig
from atzoo.errors import ConfigError
from atzoo.methods.base import LossOutput, Method
from atzoo.methods.trades import TRADES, kl_batchmean
from atzoo.registry import METHODS


def lbgat_loss(
    logits_adv: Tensor, logits_clean: Tensor, logits_teacher: Tensor, y: Tensor, beta: float
) -> dict[str, Tensor]:
    """LBGAT loss parts: ``mse``, ``ce_teacher`` and (for ``beta != 0``) ``kl``.

    Args:
        logits_adv: student logits on ``x'``, ``f(x')`` (train mode, keeps its graph).
        logits_clean: student logits on ``x``, ``f(x)`` (train mode).
        logits_teacher: teacher logits on ``x``, ``g(x)`` (train mode, keeps its graph).
        y: labels ``(B,)``.
        beta: weight of the student's TRADES KL term (0: LBGAT0, 6: LBGAT6).

    Returns:
        ``{"mse": MSE(f(x'), g(x)), "ce_teacher": CE(g(x), y)[, "kl": beta * KL]}``.
    """
    parts = {
        "mse": F.mse_loss(logits_adv, logits_teacher),  # mean over all B x K logits
        "ce_teacher": F.cross_entropy(logits_teacher, y),
    }
    if beta != 0:
        parts["kl"] = beta * kl_batchmean(logits_clean, logits_adv)
    return parts


def student_shape(model: nn.Module) -> tuple[int | None, int | None]:
    """``(num_classes, in_channels)`` of a network: its head ``fc`` and its first convolution.

    ``None`` where the network has no such layer.
    """
    head = getattr(model, "fc", None)
    if not isinstance(head, nn.Linear) and hasattr(model, "get_classifier"):
        head = model.get_classifier()
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return (
        head.out_features if isinstance(head, nn.Linear) else None,
        conv.in_channels if conv is not None else None,
    )


@dataclass(frozen=True)
class LBGATConfig(MethodConfig):
    """LBGAT hyper-parameters.

    Attributes:
        beta: weight of the student's KL term; 0 ("LBGAT0", default) or 6 ("LBGAT6").
        teacher: registered architecture of the natural teacher (``atzoo list models``).
        teacher_checkpoint: optional initial teacher weights: a run directory, a
            ``model.safetensors`` file or a ``.pt``/``.pth`` state dict. The teacher is
            trained jointly either way.
    """

    name: str = "lbgat"
    beta: float = 0.0
    teacher: str = "resnet18"
    teacher_checkpoint: Optional[str] = None

    def validate(self) -> None:
        from atzoo.registry import MODELS, load_builtins

        if self.beta < 0:
            raise ConfigError(f"method.beta must be >= 0, got {self.beta}")
        load_builtins()
        if self.teacher not in MODELS:
            raise ConfigError(f"method.teacher: {MODELS.unknown_message(self.teacher)}")
        if self.teacher_checkpoint is not None and not Path(self.teacher_checkpoint).exists():
            raise ConfigError(
                f"method.teacher_checkpoint not found: {self.teacher_checkpoint} "
                "(give a run directory, a model.safetensors file or a .pt state dict)"
            )


@METHODS.register("lbgat")
class LBGAT(Method):
    """LBGAT: a robust student guided by the logits of a jointly trained natural teacher."""

    config_class = LBGATConfig
    # Only the student's TRADES term is a regulariser: MSE(f(x'), g(x)) is LBGAT's main
    # (robust classification) term and CE(g(x), y) trains the teacher.
    regularizers = ("kl",)
    attack_defaults = {"bn_mode": "eval", "random_start": "normal"}
    summary = "LBGAT (Cui et al. 2021), MSE(f(x'), g(x)) + CE(g(x), y) + beta KL; joint natural teacher"

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """The official code's settings: TRADES's KL-PGD-10 (eps 0.031, step 0.007, normal
        start); SGD lr 0.1 (0.02 in the first epoch), momentum 0.9, wd 2e-4, 100 epochs,
        x0.1 from epochs 75 and 90."""
        return {
            "attack": {"norm": "linf", "eps": 0.031, "step_size": 0.007, "steps": 10, "random_start": "normal"},
            "optim": {"epochs": 100, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "schedule": "piecewise",
                      "milestones": [75, 90], "warmup_epochs": 1, "warmup_lr": 0.02},
        }
    config: LBGATConfig

    def build_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """The natural teacher ``g``, with the student's classes and input channels.

        Those come from ``model.num_classes``/``model.in_channels`` when set, else from
        the student itself (its head ``fc`` and first convolution).
        """
        from atzoo.models.weights import load_weights
        from atzoo.models import create_model

        inferred = student_shape(model)
        num_classes = self.ctx.model.num_classes or inferred[0]
        in_channels = self.ctx.model.in_channels or inferred[1]
        if num_classes is None or in_channels is None:
            raise ConfigError(
                "lbgat cannot tell the student's number of classes and input channels to build its "
                "teacher: set model.num_classes and model.in_channels"
            )
        teacher = create_model(self.config.teacher, num_classes=num_classes, in_channels=in_channels)
        if self.config.teacher_checkpoint is not None:
            load_weights(teacher, self.config.teacher_checkpoint, what="method.teacher_checkpoint")
        return {"teacher": teacher}

    # TRADES's KL-PGD on the student (official code); the teacher is not touched.
    attack = TRADES.attack

    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        assert x_adv is not None, "LBGAT needs the adversarial batch"
        beta = self.config.beta
        # The reference's order of forwards (student adv, student clean, teacher) keeps
        # the BatchNorm running statistics updated in the same sequence.
        logits_adv = model(x_adv)
        with torch.set_grad_enabled(torch.is_grad_enabled() and beta != 0):
            logits_clean = model(x)
        logits_teacher = modules["teacher"](x)
        parts = lbgat_loss(logits_adv, logits_clean, logits_teacher, y, beta)
        return LossOutput(parts=parts, logits=logits_adv)
