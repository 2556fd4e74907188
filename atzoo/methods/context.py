"""What the engine gives a method: a narrow, read-only context instead of the whole run config.

A method sees its own frozen config (``Method.config``) and a :class:`MethodContext`:

* ``attack`` -- the run's training attack, a :class:`~atzoo.attacks.BatchAttack` built once
  from ``attack.*`` through the ``ATTACKS`` registry (``attack.name``, default ``pgd``);
* ``model`` -- :class:`ModelFacts`: architecture name, classes, input channels;
* ``resources`` -- what the method declared it needs (:meth:`Method.needs`), provided by
  the engine before the method is built (e.g. the run directory of a standard-trained
  model for ARREST).

and, per step, a :class:`StepContext` in its step hooks. Methods never import the engine
(``atzoo/engine``); the engine builds these objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from atzoo.errors import ConfigError

if TYPE_CHECKING:
    from atzoo.attacks.registered import BatchAttack
    from atzoo.config import RunConfig


@dataclass(frozen=True)
class ModelFacts:
    """Read-only facts about the run's network.

    Attributes:
        name: registered architecture (``model.name``).
        num_classes, in_channels: the ``model.*`` settings, or the dataset's when the engine
            knows them (``None`` when neither says).
    """

    name: str
    num_classes: int | None = None
    in_channels: int | None = None


@dataclass(frozen=True)
class StandardModel:
    """A need: a model of this run's architecture trained with ``standard`` on this run's data.

    The engine trains it for ``epochs`` epochs (same data, model, seed and optimiser, milestones
    scaled) into the sibling run directory ``<run dir>-pretrain``, or reuses the one there,
    and provides that run directory as ``ctx.resources["standard_model"]``.
    """

    epochs: int
    key: ClassVar[str] = "standard_model"


#: Every kind of need a method may declare (the engine knows how to satisfy each).
Need = StandardModel


@dataclass(frozen=True)
class MethodContext:
    """The engine-owned, read-only view of a run that a method gets (see the module docstring)."""

    attack: "BatchAttack"
    model: ModelFacts
    resources: Mapping[str, Path] = field(default_factory=dict)
    #: ``optim.label_smoothing``: the smoothing of the classification CE of methods that
    #: declare ``Method.takes_label_smoothing`` (0: plain CE).
    label_smoothing: float = 0.0

    def resource(self, key: str) -> Path:
        """The provided resource ``key``.

        Raises:
            ConfigError: it was not provided (the method was built outside ``atzoo.engine.train``).
        """
        if key not in self.resources:
            raise ConfigError(f"the method needs '{key}', which only `atzoo train` provides "
                              f"(have: {', '.join(self.resources) or 'nothing'})")
        return self.resources[key]


@dataclass
class StepContext:
    """What the step hooks of a :class:`~atzoo.methods.base.Method` see, for one loader batch.

    Attributes:
        epoch: 0-based epoch of this batch.
        global_step: optimizer steps completed before this batch.
        model: the unwrapped network (never the DDP wrapper); its parameters are the ones
            the optimizer updates, so in-place changes under ``torch.no_grad()`` are allowed.
        modules: the method's extra modules (unwrapped).
        x, y: the clean batch and labels (on the device).
        x_adv: the training attack's batch (``None`` for clean training).
        lr: the learning rate of this step.
        synced: whether this batch's ``optimizer.step()`` updates the weights (False on the
            first k-1 batches of a ``optim.grad_accum = k`` step).
        all_reduce_sum: sums a tensor over processes (identity with one process). A hook that
            changes the weights from this process's batch alone (e.g. AWP's perturbation) uses
            it so that every process makes the same change and the replicas stay equal.
    """

    epoch: int
    global_step: int
    model: nn.Module
    modules: nn.ModuleDict
    x: Tensor
    x_adv: Tensor | None
    y: Tensor
    lr: float
    synced: bool = True
    all_reduce_sum: Callable[[Tensor], Tensor] = field(default=lambda t: t)


def method_context(run: "RunConfig", resources: Mapping[str, Path] | None = None,
                   model: ModelFacts | None = None) -> MethodContext:
    """The context of the method of ``run``: its training attack, model facts and resources.

    Every ``None`` of the attack section is filled as config resolution does (the method's
    ``attack_defaults``), so a context built from an unresolved config is complete too.
    """
    from atzoo.attacks.registered import RUN_SETTINGS, build_attack
    from atzoo.config import resolve_attack

    a = resolve_attack(run.attack, run.method.name)
    attack = build_attack(a.name, {k: getattr(a, k) for k in RUN_SETTINGS}, mode=str(a.bn_mode))
    facts = model or ModelFacts(run.model.name, run.model.num_classes, run.model.in_channels)
    smoothing = float(getattr(run.optim, "label_smoothing", 0.0))
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {smoothing}")
    takes = getattr(_method_class(run.method.name), "takes_label_smoothing", False)
    if smoothing > 0 and not takes:
        from atzoo.registry import METHODS, list_methods

        able = [m for m in list_methods() if getattr(METHODS.get(m), "takes_label_smoothing", False)]
        raise ConfigError(f"method '{run.method.name}' does not take optim.label_smoothing (it is not a plain "
                          f"classification CE there); methods that do: {', '.join(able)}")
    return MethodContext(attack=attack, model=facts, resources=dict(resources or {}), label_smoothing=smoothing)


def _method_class(name: str) -> type:
    from atzoo.registry import METHODS, load_builtins

    load_builtins()
    return METHODS.get(name)

