"""A small name -> object registry, in the style of timm's and fvcore's.

``METHODS``, ``MODELS``, ``DATASETS`` and ``ATTACKS`` are filled by decorators in the
modules that define the entries; :func:`load_builtins` imports those modules. The CLI,
the tests (parametrised over every entry) and the docs read the registries.

Prefixed names such as ``timm:resnet18`` or ``npz:path/to/data.npz`` are handled by a
prefix resolver registered with :meth:`Registry.register_prefix`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from atzoo.errors import RegistryError

T = TypeVar("T")

_BUILTIN_MODULES = ("atzoo.models", "atzoo.data", "atzoo.attacks", "atzoo.methods")


class Registry(Generic[T]):
    """Maps names to objects (classes or builder functions) of one kind.

    Args:
        kind: what the entries are, used in error messages ("method", "model", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._prefixes: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a duplicate name is an error."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Registers ``obj`` under ``name`` (non-decorator form)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        if ":" in name:
            raise ValueError(f"{self.kind} name '{name}' must not contain ':' (reserved for prefixes)")
        self._entries[name] = obj

    def register_prefix(self, prefix: str, resolver: Callable[..., Any], help: str = "") -> None:
        """Lets names of the form ``prefix:REST`` resolve through ``resolver(REST)``."""
        if prefix in self._prefixes:
            raise ValueError(f"{self.kind} prefix '{prefix}:' is already registered")
        self._prefixes[prefix] = resolver
        self._prefix_help = {**getattr(self, "_prefix_help", {}), prefix: help}

    def get(self, name: str) -> Any:
        """Returns the entry for ``name``; prefixed names return their resolver's result.

        Raises:
            RegistryError: ``name`` is unknown; the message lists the valid names and the
                closest match.
        """
        if name in self._entries:
            return self._entries[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self._prefixes:
            return self._prefixes[prefix](rest)
        raise RegistryError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        """One line: the unknown name, the closest match, and every valid choice."""
        choices = self.names() + [f"{p}:..." for p in self._prefixes]
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown {self.kind} '{name}'.{hint} Valid choices: {', '.join(choices)}"

    def names(self) -> list[str]:
        """Registered names in sorted order (prefixes excluded)."""
        return sorted(self._entries)

    def prefixes(self) -> dict[str, str]:
        """Registered prefixes and their help text."""
        return dict(getattr(self, "_prefix_help", {}))

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        prefix, sep, _ = name.partition(":")
        return name in self._entries or bool(sep and prefix in self._prefixes)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def fact(self, name: str, key: str, default: Any = None) -> Any:
        """A fact the entry ``name`` declared where it was registered (:func:`declare`), or
        ``default`` (also for an unknown or a prefixed name, which declare nothing)."""
        if ":" in name or name not in self._entries:
            return default
        return getattr(self._entries[name], "facts", {}).get(key, default)


def declare(**facts: Any) -> Callable[[T], T]:
    """Declares facts of a registered entry beside its definition, as timm's ``pretrained_cfg``::

        @DATASETS.register("cifar10")
        @declare(train_size=50_000, image_size=32)
        def cifar10(...): ...

    Queried with :meth:`Registry.fact` (``DATASETS.fact("cifar10", "train_size")``), so no
    table keyed by name elsewhere needs an edit when an entry is added.
    """

    def decorator(obj: T) -> T:
        obj.facts = {**getattr(obj, "facts", {}), **facts}  # type: ignore[attr-defined]
        return obj

    return decorator


METHODS: Registry[Any] = Registry("method")
MODELS: Registry[Any] = Registry("model")
DATASETS: Registry[Any] = Registry("dataset")
ATTACKS: Registry[Any] = Registry("attack")

REGISTRIES: dict[str, Registry[Any]] = {
    "methods": METHODS,
    "models": MODELS,
    "datasets": DATASETS,
    "attacks": ATTACKS,
}


def load_builtins() -> None:
    """Imports the modules whose decorators fill the registries (idempotent)."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def get_registry(kind: str) -> Registry[Any]:
    """Returns the registry called ``kind`` (``methods``, ``models``, ...)."""
    if kind not in REGISTRIES:
        close = difflib.get_close_matches(kind, list(REGISTRIES), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise RegistryError(f"unknown registry '{kind}'.{hint} Valid choices: {', '.join(REGISTRIES)}")
    return REGISTRIES[kind]


def list_methods() -> list[str]:
    load_builtins()
    return METHODS.names()


def list_models() -> list[str]:
    load_builtins()
    return MODELS.names()


def list_datasets() -> list[str]:
    load_builtins()
    return DATASETS.names()


def list_attacks() -> list[str]:
    load_builtins()
    return ATTACKS.names()
