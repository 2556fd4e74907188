"""Shafahi et al., "Adversarial Training for Free!", NeurIPS 2019: Free-AT.

Each minibatch is trained on ``m`` times in a row ("minibatch replay", the paper's Alg. 1).
One forward and one backward per replay give both the weight gradient and the input
gradient; the input gradient moves a perturbation ``delta`` that is carried from replay
to replay *and from one minibatch to the next*::

    for each minibatch (x, y), m times:
        loss   = CE(f(clip_[0,1](x + delta)), y)        # one forward
        g_w, g_x = backward(loss)                       # one backward: both gradients
        w      <- SGD step with g_w
        delta  <- clip_[-eps, eps](delta + eps * sign(g_x))

So a replay costs exactly one step of standard training, and the paper divides the number
of epochs by ``m`` (Sec. 4: "we divide the number of epochs by m"), which makes the whole
run cost what standard training costs.

In atzoo the engine does the replay: :attr:`Method.replays` is ``m``, and the trainer
takes ``m`` ordinary engine steps on each loader batch, so the learning rate, the
optimizer, checkpoints (a resumed run continues mid-replay) and the step counters see
every replay. The method's "attack" adds no pass: it returns ``x + delta``; the loss
makes that input a leaf of the graph, so the engine's own backward fills its gradient,
which ``before_optimizer_step`` turns into the next ``delta``.

Setting (official ``config.py`` of github.com/ashafahi/free_adv_train, CIFAR-10): m = 8,
eps 8/255, step eps, batch 128, SGD momentum 0.9, weight decay 2e-4, lr 0.1 divided by
10 at 40k and 60k of 80k optimizer steps (= replays); WRN-32-10. 80k steps of 390
batches x 8 replays is ~26 epochs: ``recipes/free_at_cifar10_wrn34_10.yaml`` trains 26
epochs with the drops at epochs 13 and 19 (on WRN-34-10, atzoo's nearest architecture).

Deviations: the official code clips ``x + delta`` to the image range before the forward,
as here; the gradient is taken with respect to the clipped input (zero where the clip is
active), so ``delta`` does not move in those pixels. With several processes each keeps
the ``delta`` of its own shard of the batch (as in the official multi-GPU ImageNet code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.config import MethodConfig
from atzoo.errors import ConfigError
from atzoo.methods.base import LossOutput, Method, MethodContext, StepContext
from atzoo.registry import METHODS


@dataclass(frozen=True)
class FreeATConfig(MethodConfig):
    """Free-AT hyper-parameters.

    Attributes:
        replays: ``m``, optimizer steps per minibatch (paper: 8 on CIFAR-10).
    """

    name: str = "free_at"
    replays: int = 8

    def validate(self) -> None:
        if self.replays < 1:
            raise ConfigError(f"method.replays must be >= 1, got {self.replays}")


@METHODS.register("free_at")
class FreeAT(Method):
    """Minibatch replay with a perturbation carried across replays and minibatches."""

    config_class = FreeATConfig
    attack_defaults = {"bn_mode": "train", "random_start": "none"}
    summary = "Free-AT (Shafahi et al. 2019): each batch replayed m times, delta carried, epochs / m"
    single_step = True
    config: FreeATConfig

    def __init__(self, config: MethodConfig, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        if ctx.attack.norm != "linf":
            raise ConfigError(f"free_at is defined for attack.norm=linf only, got {ctx.attack.norm}")
        self.delta: Tensor | None = None  # carried across replays and minibatches
        self._input: Tensor | None = None  # this step's graph leaf x + delta

    @property
    def replays(self) -> int:
        return int(self.config.replays)

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """The official CIFAR-10 setting: m = 8, eps 8/255, step eps; 26 epochs (80k replays),
        lr 0.1, x0.1 at epochs 13 and 19, weight decay 2e-4."""
        return {"attack": {"norm": "linf", "eps": 8 / 255, "step_size": 8 / 255, "steps": 1, "random_start": "none"},
                "optim": {"epochs": 26, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "schedule": "piecewise",
                          "milestones": [13, 19], "warmup_lr": None}}

    def current_delta(self, x: Tensor) -> Tensor:
        """The carried perturbation, zero at the start or when the batch shape changes."""
        if self.delta is None or self.delta.shape != x.shape:
            self.delta = torch.zeros_like(x, dtype=torch.float32)
        elif self.delta.device != x.device:  # restored from a checkpoint (kept on the CPU)
            self.delta = self.delta.to(x.device)
        return self.delta

    def attack(self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, y: Tensor) -> Tensor:
        """``clip_[0,1](x + delta)``: no pass of its own (the gradient comes from the training backward)."""
        return (x.detach().float() + self.current_delta(x)).clamp(0, 1).to(dtype=x.dtype)

    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        assert x_adv is not None, "Free-AT needs x + delta"
        self._input = x_adv.detach().requires_grad_(True)  # the engine's backward fills its .grad
        logits = model(self._input)
        return LossOutput(parts={"ce_adv": F.cross_entropy(logits, y)}, logits=logits)

    def before_optimizer_step(self, step: StepContext) -> None:
        """``delta <- clip_[-eps, eps](delta + step * sign(g_x))`` from the training backward's input gradient."""
        leaf, self._input = self._input, None
        if leaf is None or leaf.grad is None or self.delta is None:
            return
        a = self.ctx.attack
        step_size = float(a.settings.get("step_size") or a.eps)
        with torch.no_grad():
            self.delta = (self.delta + step_size * leaf.grad.float().sign()).clamp(-a.eps, a.eps)

    def state_dict(self) -> dict[str, Any]:
        return {"delta": self.delta.detach().cpu() if self.delta is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        delta = state.get("delta")
        self.delta = delta.clone() if isinstance(delta, Tensor) else None
