"""Suzuki et al., "Adversarial Finetuning with Latent Representation Constraint to Mitigate
Accuracy-Robustness Tradeoff", ICCV 2023 (ARREST).

ARREST adversarially fine-tunes a standard (non-robust) model ``phi`` into ``f_theta``
(``theta`` initialised from ``phi``) with, per batch::

    L = CE(f_theta(x~), y) + gamma * (1/B) * sum_i (1 - cos(z_theta(x~_i), z_phi(x_i)))

where ``z`` is the penultimate (pooled) representation, ``z_phi`` comes from a
**frozen** copy of ``phi`` (eval mode, no gradient), and ``x~`` is the training input
chosen by *noisy replay*: ``x~_i = x'_i`` (CE-PGD) unless the tuned model's clean
representation has drifted, ``cos(z_theta(x_i), z_phi(x_i)) < replay_threshold``, in
which case ``x~_i = clamp01(x_i + u_i)`` with ``u_i`` drawn uniformly from the
training attack's eps-ball.

No official code exists. Every choice the paper does not fix, and atzoo's default:

* ``phi``: ``pretrained`` (a run directory of ``atzoo train standard`` or its
  ``model.safetensors``). Without it, ``pretrain_epochs > 0`` trains ``phi`` first with
  the ``standard`` method (same data, model, seed and optimiser settings, milestones
  scaled to ``pretrain_epochs``) into the sibling run directory ``<run dir>-pretrain``,
  and reuses it when it is there with the same settings. ARREST declares this need
  (:meth:`ARREST.needs` -> :class:`~atzoo.methods.context.StandardModel`); the engine
  satisfies it (:mod:`atzoo.engine.needs`). Single-process only: a distributed run must
  pass ``pretrained``.
* Representation ``z``: the penultimate features (``atzoo.models.penultimate_features``).
* Distance: ``1 - cos``, averaged over the batch (the same scale as AR-AT's).
* ``gamma = 10`` (atzoo's choice): once training settles ``1 - cos`` is of order 0.1,
  so the term is of the order of the adversarial CE.
* Noisy-replay test: the cosine between the tuned and the frozen model's clean
  representations, computed per sample at every step in the attack's BN mode without
  gradient; ``replay_threshold = 0.9`` (atzoo's choice); ``-1`` turns replay off.
* Replay noise: ``uniform`` in the training attack's eps-ball (L-inf: each pixel
  ``U(-eps, eps)``; L2: uniform in the ball), clamped to [0, 1]; ``none`` replays
  the clean ``x``.
* The replay decision is made in :meth:`ARREST.attack`, where the model is already
  in the attack's mode, so the train-mode forward of the loss sees only ``x~``.
* Training attack: CE-PGD as in AT (eval mode, uniform start).
* Recipe schedule (``recipes/arrest_cifar10_resnet18.yaml``): the AR-AT comparison
  protocol (100 epochs, lr 0.1, x0.1 at 75 and 90, wd 5e-4) for the fine-tuning.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.config import MethodConfig
from atzoo.errors import ConfigError
from atzoo.methods.base import LossOutput, Method, MethodContext, StandardModel
from atzoo.models.weights import load_weights, read_state_dict  # noqa: F401 (re-exported)
from atzoo.registry import METHODS


# --------------------------------------------------------------------------- loss


def arrest_loss(logits_adv: Tensor, z_adv: Tensor, z_ref: Tensor, y: Tensor, gamma: float) -> dict[str, Tensor]:
    """ARREST loss parts: ``ce_adv = CE(f(x~), y)``, ``rep = gamma * mean(1 - cos(z~, z_phi))``.

    Args:
        logits_adv: logits of the tuned model on the training input ``x~``.
        z_adv: penultimate features of the tuned model on ``x~`` (keeps its graph).
        z_ref: penultimate features of the frozen pretrained model on clean ``x``.
        y: labels ``(B,)``.
        gamma: weight of the representation term.
    """
    cos = F.cosine_similarity(z_adv, z_ref, dim=1)
    return {"ce_adv": F.cross_entropy(logits_adv, y), "rep": gamma * (1.0 - cos).mean()}


def eps_ball_noise(x: Tensor, eps: float, norm: str) -> Tensor:
    """A perturbation drawn uniformly from the L-inf or L2 eps-ball, shaped like ``x``."""
    if norm == "linf":
        return (torch.rand_like(x) * 2 - 1) * eps
    flat = torch.randn_like(x).flatten(1)
    direction = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    radius = eps * torch.rand(x.shape[0], 1, device=x.device, dtype=x.dtype) ** (1.0 / flat.shape[1])
    return (direction * radius).view_as(x)


def noisy_replay(
    x: Tensor, x_adv: Tensor, cos: Tensor, *, threshold: float, eps: float, norm: str, noise: str
) -> tuple[Tensor, Tensor]:
    """Replaces ``x_adv`` by a non-adversarial input where the representation drifted.

    Args:
        x: clean batch; x_adv: its adversarial examples.
        cos: per-sample cosine between the tuned and the pretrained clean representations.
        threshold: replay where ``cos < threshold``.
        eps, norm: the eps-ball the replay noise is drawn from.
        noise: ``"uniform"`` (uniform in the eps-ball) or ``"none"`` (the clean ``x``).

    Returns:
        ``(x_tilde, replayed)``: the training input and the boolean mask of replayed samples.
    """
    replayed = cos < threshold
    clean = x + eps_ball_noise(x, eps, norm) if noise == "uniform" else x
    mask = replayed.view(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, clean.clamp(0, 1), x_adv), replayed


# --------------------------------------------------------------------------- modules


class FrozenReference(nn.Module):
    """A frozen copy of the pretrained model: no gradients, always in eval mode.

    ``train()`` cannot switch it to train mode, so the engine's ``.train()`` on the
    training module leaves its BatchNorm statistics untouched.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(model)
        self.net.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenReference":
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- method


@dataclass(frozen=True)
class ARRESTConfig(MethodConfig):
    """ARREST hyper-parameters (atzoo's defaults; the paper publishes no code).

    Attributes:
        pretrained: the standard model ``phi``: a run directory or ``model.safetensors``.
        pretrain_epochs: without ``pretrained``, train ``phi`` with ``standard`` for
            this many epochs first (0: ``pretrained`` is required).
        gamma: weight of the representation term ``1 - cos(z'(theta), z(phi))``.
        replay_threshold: replay samples whose clean-representation cosine (tuned vs
            pretrained) is below this; in [-1, 1], -1 turns noisy replay off.
        replay_noise: ``uniform`` noise in the eps-ball, or ``none`` (clean input).
    """

    name: str = "arrest"
    pretrained: Optional[str] = None
    pretrain_epochs: int = 100
    gamma: float = 10.0
    replay_threshold: float = 0.9
    replay_noise: Literal["uniform", "none"] = "uniform"

    def validate(self) -> None:
        if self.gamma < 0:
            raise ConfigError(f"method.gamma must be >= 0, got {self.gamma}")
        if not -1.0 <= self.replay_threshold <= 1.0:
            raise ConfigError(f"method.replay_threshold must be in [-1, 1], got {self.replay_threshold}")
        if self.pretrain_epochs < 0:
            raise ConfigError(f"method.pretrain_epochs must be >= 0, got {self.pretrain_epochs}")
        if self.pretrained is not None and not Path(self.pretrained).exists():
            raise ConfigError(
                f"method.pretrained not found: {self.pretrained} "
                "(give the run directory of `atzoo train standard` or its model.safetensors)"
            )
        if self.pretrained is None and self.pretrain_epochs == 0:
            raise ConfigError(
                "arrest fine-tunes a standard model: set method.pretrained (a run directory or "
                "model.safetensors) or method.pretrain_epochs > 0"
            )


@METHODS.register("arrest")
class ARREST(Method):
    """ARREST: adversarial fine-tuning of a standard model with a representation constraint."""

    config_class = ARRESTConfig
    attack_defaults = {"bn_mode": "eval", "random_start": "uniform"}
    summary = "ARREST (Suzuki et al. 2023), fine-tunes a standard model: CE(f(x'), y) + gamma (1 - cos) + noisy replay"

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """atzoo's settings (the paper publishes no code): CE-PGD-10, eps 8/255, step 2/255,
        uniform start; the AR-AT comparison's schedule (lr 0.1, 0.02 in the first epoch,
        wd 5e-4, 100 epochs, x0.1 from epochs 75 and 90)."""
        schedule = {"schedule": "piecewise", "milestones": [75, 90], "warmup_epochs": 1, "warmup_lr": 0.02}
        return {
            "attack": {"norm": "linf", "eps": 8 / 255, "step_size": 2 / 255, "steps": 10, "random_start": "uniform"},
            "optim": {"epochs": 100, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, **schedule},
        }
    config: ARRESTConfig

    regularizers = ("rep",)

    def __init__(self, config: MethodConfig, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        self._replayed: Tensor | None = None  # last step's replay mask, for logging only
        # The frozen reference's clean features, computed once per batch: the replay check
        # in attack() needs them and so does the loss; phi never changes, so reuse them.
        self._z_ref: tuple[Tensor, Tensor] | None = None

    @classmethod
    def needs(cls, config: MethodConfig) -> tuple[StandardModel, ...]:
        """Without ``method.pretrained``: ``phi`` trained with ``standard`` for ``pretrain_epochs``."""
        assert isinstance(config, ARRESTConfig)
        return () if config.pretrained else (StandardModel(epochs=config.pretrain_epochs),)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Initialises the model to be tuned with the pretrained standard model ``phi``."""
        source = self.config.pretrained or self.ctx.resource(StandardModel.key)
        load_weights(model, source, what="method.pretrained")
        return model

    def build_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """The frozen reference ``phi`` (a copy of the freshly loaded model)."""
        return {"reference": FrozenReference(model)}

    def attack(self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, y: Tensor) -> Tensor:
        from atzoo.attacks import attack_mode
        from atzoo.models import penultimate_features

        x_adv = self.training_pgd(model, x, y, loss="ce")
        if self.config.replay_threshold <= -1.0:  # cos >= -1 always: replay is off
            self._replayed = None
            return x_adv
        with torch.no_grad(), attack_mode(model, self.ctx.attack.mode, None):
            z_tuned = penultimate_features(model, x)
        z_ref = self._reference_features(modules, x)
        cos = F.cosine_similarity(z_tuned.float(), z_ref.float(), dim=1)
        a = self.ctx.attack
        x_tilde, self._replayed = noisy_replay(
            x, x_adv, cos, threshold=self.config.replay_threshold, eps=a.eps, norm=a.norm,
            noise=self.config.replay_noise,
        )
        return x_tilde

    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        from atzoo.models import classify_features, penultimate_features

        assert x_adv is not None, "ARREST needs the adversarial batch"
        z_adv = penultimate_features(model, x_adv)
        logits_adv = classify_features(model, z_adv)
        z_ref = self._reference_features(modules, x)
        self._z_ref = None  # one batch only
        parts = arrest_loss(logits_adv, z_adv, z_ref, y, self.config.gamma)
        stats = {"replay_frac": float(self._replayed.float().mean())} if self._replayed is not None else {}
        return LossOutput(parts=parts, logits=logits_adv, stats=stats)

    def _reference_features(self, modules: nn.ModuleDict, x: Tensor) -> Tensor:
        """``z(phi)`` of the clean batch, reused when the same batch tensor comes back."""
        from atzoo.models import penultimate_features

        cached = self._z_ref
        if cached is not None and _same_tensor(cached[0], x):
            return cached[1]
        with torch.no_grad():
            z_ref = penultimate_features(modules["reference"].net, x)
        self._z_ref = (x, z_ref)
        return z_ref


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same storage and view (not merely equal values)."""
    return a is b or (
        a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
        and a.dtype == b.dtype and a.device == b.device and a._version == b._version
    )
