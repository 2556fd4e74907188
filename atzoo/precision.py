"""Numeric precision per phase: the training forward/backward, the training attack, evaluation.

A run has three phases that may use different precisions:

* ``run.precision`` -- the training forward and backward (Accelerate's mixed precision:
  float32 master weights, the forward under ``torch.autocast``; fp16 adds a loss scaler);
* ``attack.precision`` -- the training attack (``same`` follows ``run.precision``);
* ``eval.precision`` -- the evaluation attacks (PGD, AutoAttack), float32 unless asked.

Each phase runs inside :func:`autocast` for its precision. ``fp32`` *disables* an autocast
that an enclosing block turned on, so a float32 attack inside a bf16 training step really
runs in float32. Only what autocast covers changes: weights, the iterate of an attack and
its projection stay float32 (see :mod:`atzoo.attacks.pgd`).

Support per device (refused with one line where missing): fp32 everywhere; bf16 on CPUs
(native on CPUs with ``avx512_bf16``/``amx_bf16``, emulated and slow elsewhere), on CUDA
devices that report bf16 support (Ampere and later) and on MPS; fp16 on CUDA and MPS
only -- Accelerate silently runs ``fp16`` as float32 on a CPU, so atzoo refuses it there.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

from atzoo.errors import ConfigError

#: Concrete precisions of a phase.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: ``run.precision`` also accepts Accelerate's name for float32.
RUN_PRECISIONS: tuple[str, ...] = ("no", *PRECISIONS)
#: ``attack.precision``: a concrete precision or ``same`` (as ``run.precision``).
ATTACK_PRECISIONS: tuple[str, ...] = (*PRECISIONS, "same")

#: Label suffix of the fp32 rows that ``atzoo bench step-cost`` measures beside lower precisions.
FP32_TWIN_SUFFIX = "@fp32"

_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def canonical(precision: str) -> str:
    """``fp32`` for Accelerate's ``no``; the other names unchanged (ConfigError if unknown)."""
    name = "fp32" if precision == "no" else precision
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'. Valid choices: {', '.join(RUN_PRECISIONS)}")
    return name


def accelerate_name(precision: str) -> str:
    """The ``mixed_precision`` value Accelerate expects (``no`` for fp32)."""
    name = canonical(precision)
    return "no" if name == "fp32" else name


def attack_precision(attack: str, run: str) -> str:
    """The training attack's concrete precision: ``attack`` itself, or ``run``'s for ``same``."""
    return canonical(run) if attack == "same" else canonical(attack)


def dtype_of(precision: str) -> torch.dtype:
    """The autocast compute dtype of a precision (float32 for ``fp32``)."""
    return _DTYPES.get(canonical(precision), torch.float32)


def check_supported(precision: str, device: torch.device | str, setting: str = "precision") -> None:
    """Raises ConfigError (one line) when ``device`` cannot run ``precision``.

    Args:
        precision: ``fp32``/``no``, ``bf16`` or ``fp16``.
        device: where the phase runs.
        setting: the name the user gave it (``run.precision``, ``--attack-precision``).
    """
    name = canonical(precision)
    kind = torch.device(device).type
    problem = _unsupported_reason(name, kind)
    if problem:
        raise ConfigError(f"{setting}={precision} cannot be used on {kind}: {problem}; valid here: "
                          f"{', '.join(p for p in PRECISIONS if not _unsupported_reason(p, kind))}")


def _unsupported_reason(name: str, kind: str) -> str | None:
    """Why ``kind`` lacks the type, or None when it has it."""
    if name == "fp32":
        return None
    if name == "fp16" and kind == "cpu":
        return "fp16 autocast on a CPU is not supported by Accelerate (it would silently run fp32); use bf16"
    if name == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return "this GPU has no native bfloat16 (it needs compute capability 8.0 or later); use fp16"
    if not torch.amp.is_autocast_available(kind):
        return f"torch has no autocast for device type '{kind}'"
    return None


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager[Any]:
    """``torch.autocast`` for a phase: on with the precision's dtype, or *off* for fp32.

    The fp32 context switches off an autocast opened by an enclosing block (a bf16
    training step), so the phase inside really computes in float32.
    """
    name = canonical(precision)
    kind = torch.device(device).type
    if name == "fp32":
        return torch.autocast(kind, enabled=False)
    return torch.autocast(kind, dtype=_DTYPES[name])


def profile(run: str, attack: str = "same") -> str:
    """The precision part of a hardware profile (``atzoo compare`` divides step times only
    within one): Accelerate's name of ``run`` (``no``, ``bf16``, ``fp16``), plus
    ``+attack-<p>`` when the training attack runs in another precision."""
    concrete = attack_precision(attack, run)
    name = accelerate_name(run)
    return name if concrete == canonical(run) else f"{name}+attack-{concrete}"


def describe(run: str, attack: str, evaluation: str) -> str:
    """The run's first-line summary of its precisions, e.g. ``train bf16, attack bf16, eval fp32``."""
    return f"train {canonical(run)}, attack {attack_precision(attack, run)}, eval {canonical(evaluation)}"


def precision_label(recorded: Any) -> str:
    """A profile's precision as a reader names it: Accelerate's ``no`` is ``fp32``
    (``no+attack-bf16`` -> ``fp32, attack bf16``); the recorded value itself is unchanged,
    since profiles are compared by it."""
    text = str(recorded) if recorded not in (None, "") else "unknown precision"
    head, _, attack = text.partition("+attack-")
    head = "fp32" if head == "no" else head
    return f"{head}, attack {attack}" if attack else head
