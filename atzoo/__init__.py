"""atzoo: an adversarial-training zoo for PyTorch.

Every method (standard, AT, TRADES, MART, LBGAT, ARREST, AR-AT, Asym-TRADES) is a
registered :class:`~atzoo.methods.base.Method` sharing one Accelerate training loop, one
attack module and one evaluator. See ``docs/`` for the teaching path and
``docs/api.md`` for this module's functions::

    import atzoo
    model = atzoo.load("runs/arat-resnet18-cifar10-s0")      # nn.Module, inputs in [0, 1]
    print(atzoo.evaluate(model, "cifar10", attacks=["clean", "pgd20"], n_ex=1000))

``__all__`` is the public, stable API. Names are imported on first use, so that
``import atzoo`` (and ``atzoo --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "load": "atzoo.api",
    "train": "atzoo.api",
    "evaluate": "atzoo.api",
    "compare": "atzoo.api",
    "create_model": "atzoo.models",
    "create_dataset": "atzoo.data",
    "list_methods": "atzoo.registry",
    "list_models": "atzoo.registry",
    "list_datasets": "atzoo.registry",
    "list_attacks": "atzoo.registry",
    "list_recipes": "atzoo.config.resources",
    "build_config": "atzoo.config",
    "RunConfig": "atzoo.config",
    "pgd": "atzoo.attacks",
    "fgsm": "atzoo.attacks",
    "AtzooError": "atzoo.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Imports a public name on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'atzoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
