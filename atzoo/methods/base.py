"""The contract every adversarial-training method keeps.

A :class:`Method` computes named loss parts from a batch; the engine sums them,
backpropagates, clips, steps and logs. A method never calls ``backward`` or
``optimizer.step`` on the model, never moves tensors between devices, never wraps
models and never imports ``atzoo.engine``: what it may know of the run is its own frozen
config (``self.config``) and the engine's :class:`~atzoo.methods.context.MethodContext`
(``self.ctx``: the training attack, model facts, the resources it declared it needs).

Life cycle inside the engine (``atzoo/engine``)::

    needs = Method.needs(cfg.method)                     # e.g. ARREST: StandardModel(epochs)
    resources = <engine satisfies needs>                 # e.g. trains <run dir>-pretrain
    method = create_method(cfg.method.name, cfg, resources=resources)
    model = method.prepare_model(create_model(...))      # e.g. convert BN to routed BN
    modules = method.build_modules(model)                # predictors, teacher (trained jointly)
    ... accelerator.prepare(TrainingModule(model, modules, method), optimizer, ...)
    for epoch:
        method.on_epoch_start(EpochContext(...))         # e.g. AR-AT auto-balance
        for x, y in loader:                              # one loader batch
            x_adv = method.attack(model, modules, x, y)  # unwrapped model, no param grads
            step = StepContext(epoch, global_step, model, modules, x, x_adv, y, lr, synced, all_reduce_sum)
            method.before_step(step)                     # e.g. AWP: perturb the weights
            parts, logits, stats = training_module(x, x_adv, y)  # ONE forward through DDP: the
                                                         # LossOutput of compute_loss, as a tuple
            backward(float32 sum of parts); clip (when synced)
            method.before_optimizer_step(step)           # gradients are final (when synced)
            optimizer.step(); optimizer.zero_grad()      # a no-op unless step.synced
            method.after_optimizer_step(step)            # e.g. AWP: restore the weights
    deployable = method.export(model)                    # plain network (adv route for split-BN)

Hook contract (``before_step``, ``before_optimizer_step``, ``after_optimizer_step``):

* each is called once per loader batch, on every process, in the order above (the same
  ``step`` object each time, within ``accelerator.accumulate``); ``before_step`` runs inside
  the engine's autocast, the other two outside it. ``step.model`` is the unwrapped network
  whose parameters the optimizer owns, so a hook may change them in place under
  ``torch.no_grad()`` (what it changes in ``before_step`` it must undo by
  ``after_optimizer_step`` of the same batch: the forward, backward and
  ``optimizer.step()`` then run at the changed weights and the change is removed
  afterwards, as in AWP's official code);
* ``step.synced`` is False on the first k-1 batches of an ``optim.grad_accum = k`` step:
  there ``optimizer.step()`` does not change the weights and gradients keep accumulating;
* a hook may run extra forward/backward passes on its *own* modules (e.g. a proxy copy
  made with :func:`proxy_copy`, with its own optimizer): they are not in the
  ``TrainingModule``, so the engine's optimizer and DDP never see them; with several
  processes such a module sees only this process's batch, so a change to ``step.model``
  derived from it must be made the same on every process (reduce what it depends on with
  ``step.all_reduce_sum``) or the replicas drift apart;
* a hook must not put gradients into ``step.model``'s parameters (no ``backward`` through
  them: use ``torch.autograd.grad`` or a proxy) and returns nothing;
* anything a resumed run needs (a proxy optimizer's state, counters) goes into
  :meth:`Method.state_dict` -- tensors, plain Python values, dicts with string or integer
  keys (so ``optimizer.state_dict()`` can be stored as it is). Checkpoints are taken
  between optimizer steps, after ``after_optimizer_step``.

All forward passes of the loss happen inside one call of the DDP-wrapped
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
from atzoo.methods.context import MethodContext, ModelFacts, Need, StandardModel, StepContext, method_context

if TYPE_CHECKING:
    from atzoo.config import RunConfig

__all__ = [
    "EpochContext", "LossOutput", "Method", "MethodContext", "ModelFacts", "Need", "StandardModel", "StepContext",
    "create_method", "proxy_copy", "total_loss",
]


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
        return total_loss(self.parts)


def total_loss(parts: dict[str, Tensor]) -> Tensor:
    """The float32 sum of loss parts (the training loss, or one group of parts)."""
    return torch.stack([p.float() for p in parts.values()]).sum()


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


class Method(ABC):
    """Base class of every registered method.

    Subclasses set ``config_class`` (a frozen :class:`MethodConfig` dataclass holding
    the paper's defaults) and implement :meth:`compute_loss`; most also override
    :meth:`attack`. Class attribute ``attack_defaults`` fills the training-attack
    fields the user left unset (``bn_mode``, ``random_start``); ``regularizers`` names
    the loss parts that are the regulariser (see :meth:`is_regularizer`).

    Attributes:
        config: the method's own frozen config (resolved).
        ctx: the engine's :class:`MethodContext` (training attack, model facts, resources).
    """

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    attack_defaults: ClassVar[dict[str, Any]] = {}
    #: One-line summary shown by ``atzoo list methods``.
    summary: ClassVar[str] = ""
    #: Whether the loss smooths its classification CE by ``ctx.label_smoothing``
    #: (``optim.label_smoothing``); a method that does not refuses a value above 0.
    takes_label_smoothing: ClassVar[bool] = False
    #: Loss parts that are the *regulariser* (invariance, distillation) in the gradient
    #: diagnostics; every other part is a classification term. A name ``p`` here also
    #: covers the parts ``p/<layer>``.
    regularizers: ClassVar[tuple[str, ...]] = ()
    #: One attack step per batch (FGSM-based fast AT): the engine then watches for
    #: catastrophic overfitting by default (``eval.co_check=auto``, atzoo/engine/overfit.py).
    single_step: ClassVar[bool] = False

    def __init__(self, config: MethodConfig, ctx: MethodContext) -> None:
        self.config = config
        self.ctx = ctx

    @classmethod
    def needs(cls, config: MethodConfig) -> tuple[Need, ...]:
        """What the engine must provide before this method is built (``ctx.resources``).

        E.g. ARREST without ``method.pretrained`` returns ``(StandardModel(epochs),)``.
        """
        return ()

    @property
    def replays(self) -> int:
        """How many optimizer steps the engine takes on each loader batch in a row (1).

        Free-AT's minibatch replay (Shafahi et al. 2019): each batch is trained on ``m``
        times before the next one, each replay one full engine step (attack, forward,
        backward, optimizer step, hooks). An epoch then holds ``m`` times as many steps.
        """
        return 1

    @property
    def attack_route(self) -> str | None:
        """The BN route the training attack and the deployable model use (routed-BN
        methods); None for plain models. The engine's SWA BN recalibration uses it."""
        return None

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
        """The run's training attack (``self.ctx.attack``; PGD unless ``attack.name`` says otherwise).

        Args:
            loss: ``"ce"`` (AT, MART, AR-AT) or ``"kl"`` (TRADES, LBGAT; needs ``clean_probs``).
            clean_probs: the fixed clean distribution p(x) for the KL attack.
            route: BN route to attack through (``self.attack_route`` for split-BN models).
        """
        return self.ctx.attack(model, x, y, loss=loss, clean_probs=clean_probs, route=route)

    @abstractmethod
    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        """All forward passes of one training step; returns the named loss parts."""

    # ------------------------------------------------------------------ hooks
    def on_epoch_start(self, ctx: EpochContext) -> dict[str, float]:
        """Called before each epoch; returns scalars to log."""
        return {}

    def before_step(self, step: StepContext) -> None:
        """After the training attack, before the training forward/backward of this batch."""

    def before_optimizer_step(self, step: StepContext) -> None:
        """After the backward (and clipping) of this batch, before ``optimizer.step()``."""

    def after_optimizer_step(self, step: StepContext) -> None:
        """After ``optimizer.step()`` and ``zero_grad`` of this batch (see the hook contract)."""

    def is_regularizer(self, part_name: str) -> bool:
        """Whether a loss part is the regulariser (for the gradient diagnostics): its name,
        or the name before ``/``, is in :attr:`regularizers`."""
        return part_name in self.regularizers or part_name.split("/")[0] in self.regularizers

    def split_loss(self, parts: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """``(regulariser, classification)``: the sums of the two kinds of parts (None when empty)."""
        reg = {k: v for k, v in parts.items() if self.is_regularizer(k)}
        cls = {k: v for k, v in parts.items() if k not in reg}
        return (total_loss(reg) if reg else None), (total_loss(cls) if cls else None)

    def state_dict(self) -> dict[str, Any]:
        """Method state that a resumed run must restore (plain Python/tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""

    def export(self, model: nn.Module) -> nn.Module:
        """The deployable plain model (no auxiliary BN, teacher or predictor)."""
        return model


def proxy_copy(model: nn.Module) -> nn.Module:
    """A trainable deep copy of ``model`` outside the engine's optimizer and DDP (a step
    hook's scratch network, e.g. AWP's proxy); train mode, same device and dtypes."""
    import copy

    proxy = copy.deepcopy(model)
    proxy.requires_grad_(True)
    return proxy.train()


def create_method(name: str, run: "RunConfig", *, resources: dict[str, Any] | None = None,
                  model: ModelFacts | None = None) -> Method:
    """Instantiates the registered method ``name`` with its (resolved) config from ``run``.

    Args:
        run: the run configuration; the method gets ``run.method`` (resolved) and a
            :class:`MethodContext` built from it -- never ``run`` itself.
        resources: what the engine provided for :meth:`Method.needs`.
        model: model facts known to the engine (classes and channels from the dataset).
    """
    from atzoo.registry import METHODS, load_builtins

    load_builtins()
    cls = METHODS.get(name)
    return cls(run.method.resolve(run), method_context(run, resources, model))
