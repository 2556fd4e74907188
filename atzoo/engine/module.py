"""The one module that Accelerate prepares: network + method modules + the method's loss.

Wrapping everything a step touches in a single ``nn.Module`` whose ``forward`` calls
:meth:`Method.compute_loss` means that every forward pass of a training step (both BN
routes of AR-AT, LBGAT's teacher, a predictor) runs inside *one* call of the
DDP-wrapped module, so DDP sees one forward and one backward per step and synchronises
all gradients correctly, whatever the method does inside.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from atzoo.methods.base import Method


class TrainingModule(nn.Module):
    """``model`` and the method's extra modules; ``forward`` is the method's loss.

    Attributes:
        model: the network being trained (its state dict keys start with ``model.``).
        method_modules: :meth:`Method.build_modules` (predictors, teacher), keys start
            with ``method_modules.``. (Not ``modules``, which would hide
            :meth:`nn.Module.modules`.)
        method: the :class:`Method`; a plain attribute, not a submodule.
    """

    def __init__(self, model: nn.Module, method_modules: nn.ModuleDict, method: "Method") -> None:
        super().__init__()
        self.model = model
        self.method_modules = method_modules
        self.method = method

    def forward(self, x: Tensor, x_adv: Tensor | None, y: Tensor) -> tuple[dict[str, Tensor], Tensor, dict[str, float]]:
        """All forward passes of one step.

        Returns:
            ``(parts, logits, stats)`` of the method's :class:`LossOutput` (a tuple, so
            Accelerate's output casting and DDP's output traversal see plain containers).
        """
        out = self.method.compute_loss(self.model, self.method_modules, x, x_adv, y)
        return out.parts, out.logits, out.stats
