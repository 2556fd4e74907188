"""Registered attacks as one kind of object: the training attack and the evaluator's attacks.

An entry of :data:`atzoo.registry.ATTACKS` is a function ``attack(model, x, y, *, eps,
...) -> Tensor`` keeping the contract of :mod:`atzoo.attacks.pgd`. :func:`build_attack`
binds one to settings and returns a :class:`BatchAttack`; the engine builds the run's
training attack this way from ``attack.*`` (``attack.name``, default ``pgd``), and
``atzoo eval --attacks NAME`` evaluates any registered name with the evaluation's
threat model. So a new attack is one file::

    @ATTACKS.register("my_attack")          # plus one import line in atzoo/attacks/__init__.py
    def my_attack(model, x, y, *, eps, norm="linf", mode="eval", route=None, generator=None): ...

Which settings an attack receives: those of :data:`RUN_SETTINGS` it names as keyword
parameters, or exactly the tuple in its ``takes`` attribute (FGSM takes only ``eps`` and
``norm``: the run's PGD step size is not FGSM's step). Per call, ``loss`` and
``clean_probs`` go to attacks that name them (others attack the cross-entropy only);
``mode``, ``route`` and ``generator`` go to attacks that name them or take ``**kwargs``.
An entry with ``per_batch = False`` (AutoAttack, which runs on a whole subset) is listed
but is neither a training attack nor a per-batch evaluation attack.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from atzoo.attacks.mode import attack_mode
from atzoo.config.threat import ThreatModel
from atzoo.errors import ConfigError


@runtime_checkable
class Attack(Protocol):
    """What the engine (the training attack) and the evaluator run an attack through.

    ``attack(model, x, y)`` returns the adversarial batch (detached, inside
    ``threat_model``'s ball and [0, 1]) and leaves the model's train/eval flags (and BN
    route) as it found them, as torchattacks' ``Attack`` does.
    """

    name: str

    @property
    def threat_model(self) -> ThreatModel: ...

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor: ...

#: Settings of the ``attack`` config section an attack may take.
RUN_SETTINGS: tuple[str, ...] = ("eps", "norm", "step_size", "steps", "random_start", "start_std")
_LOSS_KEYWORDS = ("loss", "clean_probs")
_PASS_THROUGH = ("mode", "route", "generator")


def _keywords(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """The keyword parameters ``fn`` names, and whether it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    named = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def takes(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The run settings ``fn`` is given (its ``takes`` attribute, else the ones it names)."""
    declared = getattr(fn, "takes", None)
    if declared is not None:
        return tuple(declared)
    named, _ = _keywords(fn)
    return tuple(s for s in RUN_SETTINGS if s in named)


def is_batch_attack(fn: Callable[..., Any]) -> bool:
    """Whether a registered attack works batch by batch (all but AutoAttack)."""
    return bool(getattr(fn, "per_batch", True))


@dataclass(frozen=True)
class BatchAttack:
    """A registered attack bound to its settings; call it like the attack itself (an :class:`Attack`).

    Attributes:
        name: the registered name.
        fn: the registered function.
        settings: the run settings it is given (only those it :func:`takes`).
        mode: the model mode during the attack (``attack.bn_mode``; ``eval`` for evaluation).
        eps, norm: the threat model (every attack has one).
    """

    name: str
    fn: Callable[..., Tensor]
    settings: Mapping[str, Any]
    mode: str = "eval"
    eps: float = field(init=False)
    norm: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", float(self.settings.get("eps", 0.0)))
        object.__setattr__(self, "norm", str(self.settings.get("norm", "linf")))

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, loss: str = "ce", clean_probs: Tensor | None = None,
        route: str | None = None, mode: str | None = None, generator: Any = None,
    ) -> Tensor:
        """The adversarial batch (detached, in the eps-ball and [0, 1]).

        Args:
            loss: ``"ce"`` or another loss of :func:`atzoo.attacks.pgd` (``"kl"`` with ``clean_probs``).
            route: BN route to attack through (routed-BN models); mode: overrides :attr:`mode`.

        Raises:
            ConfigError: ``loss`` is not CE and this attack attacks the cross-entropy only.
        """
        named, var_kw = _keywords(self.fn)
        mode = mode or self.mode
        kwargs: dict[str, Any] = dict(self.settings)
        calls = {"loss": loss, "clean_probs": clean_probs}
        if "loss" in named:
            kwargs.update({k: v for k, v in calls.items() if k in named})
        elif loss != "ce":
            raise ConfigError(f"attack '{self.name}' attacks the cross-entropy only; this method needs the "
                              f"'{loss}' loss (use attack.name=pgd)")
        passed = {"mode": mode, "route": route, "generator": generator}
        kwargs.update({k: v for k, v in passed.items() if k in named or var_kw})
        # The mode (and route) hold for any registered function, and every module's
        # train/eval flag is restored afterwards, whatever the function itself does.
        with attack_mode(model, mode, route):
            return self.fn(model, x, y, **kwargs)

    @property
    def threat_model(self) -> ThreatModel:
        """The ball this attack stays in (with its step size, where it takes one)."""
        step = self.settings.get("step_size")
        return ThreatModel(self.norm, self.eps, float(step) if step is not None else None)

    def describe(self) -> dict[str, Any]:
        """The settings as written to ``eval.json`` (``attacks.<name>``)."""
        return {"attack": self.name, **self.settings}


def batch_attack_names() -> list[str]:
    """Registered attacks that work batch by batch (training and per-batch evaluation)."""
    from atzoo.registry import ATTACKS, load_builtins

    load_builtins()
    return [name for name, fn in ATTACKS.items() if is_batch_attack(fn)]


def build_attack(name: str, settings: Mapping[str, Any], *, mode: str = "eval") -> BatchAttack:
    """Binds the registered attack ``name`` to the ``settings`` it takes.

    Args:
        settings: values for (some of) :data:`RUN_SETTINGS`; those the attack does not take
            are left out.

    Raises:
        RegistryError: ``name`` is not registered (the message lists the valid names).
        ConfigError: it is not a per-batch attack (AutoAttack).
    """
    from atzoo.registry import ATTACKS, load_builtins

    load_builtins()
    fn = ATTACKS.get(name)
    if not is_batch_attack(fn):
        raise ConfigError(f"attack '{name}' runs on a whole evaluation subset, not batch by batch. "
                          f"Valid choices: {', '.join(batch_attack_names())}")
    return BatchAttack(name, fn, {k: settings[k] for k in takes(fn) if k in settings}, mode)
