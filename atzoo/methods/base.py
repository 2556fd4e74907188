"""The contract every adversarial-training method keeps.

A :class:`Method` computes named loss parts from a batch; the engine sums them,
backpropagates, clips, steps and logs. A method never calls ``backward`` or
``optimizer.step``, never moves tensors between devices, and never wraps models.

Life cycle inside the engine (see ``atzoo/engine``)::

    method = create_method(cfg.method.name, cfg)         # config: frozen dataclass
    model = method.prepare_model(create_model(...))      # e.g. convert BN to routed BN
    modules = method.build_modules(model)                # predictors, teacher (trained jointly)
    ... accelerator.prepare(TrainingModule(model, modules, method), optimizer, ...)
    for epoch:
        method.on_epoch_start(EpochContext(...))         # e.g. AR-AT auto-balance
        for x, y in loader:
            x_adv = method.attack(model, modules, x, y)  # unwrapped model, no param grads
            out = training_module(x, x_adv, y)           # ONE forward through DDP -> LossOutput
            loss = sum(out.parts.values())
    deployable = method.export(model)                    # plain network (adv route for split-BN)

All forward passes of a step happen inside one call of the DDP-wrapped
``TrainingModule`` (which calls :meth:`Method.compute_loss`), so methods with several
passes per step (two BN routes, a teacher) synchronise gradients correctly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from atzoo.config import MethodConfig

if TYPE_CHECKING:
    from atzoo.config import RunConfig


@dataclass
class LossOutput:
    """What :meth:`Method.compute_loss` returns.

    Attributes:
        parts: named, already weighted loss terms; the training loss is their sum.
            Names follow ``ce_adv``, ``ce_clean``, ``kl``, ``align/<layer>``, ...
        logits: logits of the deployable model on the training input it is judged on
            (adversarial input for robust methods, clean for ``standard``), used for
            the running training accuracy.
        stats: detached scalars to log (weights, cosine similarities, ...).
    """

    parts: dict[str, Tensor]
    logits: Tensor
    stats: dict[str, float] = field(default_factory=dict)

    def total(self) -> Tensor:
        """The training loss: the sum of all parts."""
        return torch.stack([p.float() for p in self.parts.values()]).sum()


@dataclass
class EpochContext:
    """What :meth:`Method.on_epoch_start` may use.

    Attributes:
        epoch: the 0-based epoch about to start.
        model: the unwrapped model (never the DDP wrapper).
        modules: the method's extra modules (unwrapped).
        calibration_batches: returns this process's share of the first ~1000 training
            samples, without augmentation, as ``(x, y)`` batches on the device.
        all_reduce_sum: sums a tensor over processes (identity with one process).
    """

    epoch: int
    model: nn.Module
    modules: nn.ModuleDict
    calibration_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]]
    all_reduce_sum: Callable[[Tensor], Tensor]


# Loss-part names that count as the *regulariser* (invariance / distillation) in the
# gradient diagnostics; every other part is a classification term.
REGULARIZER_PREFIXES: tuple[str, ...] = ("align", "kl", "mse", "rep", "robust", "inv")


class Method(ABC):
    """Base class of every registered method.

    Subclasses set ``config_class`` (a frozen :class:`MethodConfig` dataclass holding
    the paper's defaults) and implement :meth:`compute_loss`; most also override
    :meth:`attack`. Class attribute ``attack_defaults`` fills the training-attack
    fields the user left unset (``bn_mode``, ``random_start``).
    """

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    attack_defaults: ClassVar[dict[str, Any]] = {}
    #: One-line summary shown by ``atzoo list methods``.
    summary: ClassVar[str] = ""

    def __init__(self, config: MethodConfig, run: "RunConfig") -> None:
        self.config = config
        self.run = run

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """The training attack and optimiser of the method's own paper, as config sections.

        ``atzoo train METHOD`` without a recipe starts from these (above the dataclass
        defaults, below a recipe, flags and overrides), so a method never trains with
        another method's settings. Sections: ``attack``, ``optim`` (and ``averaging``).

        Args:
            model: ``model.name`` of the run (some papers use one setting per architecture).
        """
        return {}

    # ------------------------------------------------------------------ building
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Adapts a freshly built model (e.g. routed BN, pretrained weights)."""
        return model

    def build_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """Extra modules trained with the model (predictors, a teacher).

        Modules whose parameters have ``requires_grad=False`` (a frozen reference
        network) are kept on the device and in checkpoints but not optimised.
        """
        return {}

    # ------------------------------------------------------------------ each step
    def attack(self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, y: Tensor) -> Tensor | None:
        """Makes the training adversarial example (``None`` for clean training).

        Runs on the unwrapped model and must not create parameter gradients.
        """
        return None

    def training_pgd(
        self, model: nn.Module, x: Tensor, y: Tensor, *, loss: str = "ce", clean_probs: Tensor | None = None,
        route: str | None = None,
    ) -> Tensor:
        """PGD with the run's training-attack settings (``self.run.attack``).

        Args:
            loss: ``"ce"`` (AT, MART, AR-AT) or ``"kl"`` (TRADES, LBGAT; needs ``clean_probs``).
            clean_probs: the fixed clean distribution p(x) for the KL attack.
            route: BN route to attack through (``"adv"`` for split-BN models).
        """
        from atzoo.attacks import pgd

        a = self.run.attack
        return pgd(
            model, x, y, eps=a.eps, step_size=a.step_size, steps=a.steps, norm=a.norm,
            random_start=a.random_start, start_std=a.start_std, loss=loss,
            clean_probs=clean_probs, mode=a.bn_mode, route=route,
        )

    @abstractmethod
    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        """All forward passes of one training step; returns the named loss parts."""

    # ------------------------------------------------------------------ hooks
    def on_epoch_start(self, ctx: EpochContext) -> dict[str, float]:
        """Called before each epoch; returns scalars to log."""
        return {}

    def is_regularizer(self, part_name: str) -> bool:
        """Whether a loss part is the regulariser (for the gradient diagnostics)."""
        return part_name.split("/")[0].startswith(REGULARIZER_PREFIXES)

    def state_dict(self) -> dict[str, Any]:
        """Method state that a resumed run must restore (plain Python/tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""

    def export(self, model: nn.Module) -> nn.Module:
        """The deployable plain model (no auxiliary BN, teacher or predictor)."""
        return model


def create_method(name: str, run: "RunConfig") -> Method:
    """Instantiates the registered method ``name`` with ``run.method`` as its config."""
    from atzoo.registry import METHODS, load_builtins

    load_builtins()
    cls = METHODS.get(name)
    return cls(run.method, run)
