"""Adapter to the reference AutoAttack (Croce & Hein, ICML 2020), sharded and resumable.

AutoAttack is the ensemble APGD-CE, APGD-T (targeted DLR), FAB-T and Square
(``standard``); ``plus`` adds restarts and untargeted APGD-DLR/FAB, ``rand`` runs
APGD-CE/DLR with expectation over transformation for randomised defences, ``custom``
runs a given list. atzoo calls the reference implementation, imported as
``autoattack`` when installed and otherwise from ``pyautoattack`` (the packaged copy,
keyword-only API); :func:`autoattack_chunk` hides the difference.

Sharding and resuming (atzoo's addition, see :mod:`atzoo.attacks.sharding`): the first
``n_ex`` examples are cut into fixed-size chunks and the reference code runs on each
chunk with ``seed = base_seed + chunk_index`` and the whole chunk as one batch. The
random starts of a chunk therefore depend only on the chunk, so any number of processes
gives exactly the per-example robust flags of a single process, and a run resumed from
its state file gives exactly those of an uninterrupted run.

Deviation from the reference defaults: with fewer than 10 classes the targeted attacks
use ``num_classes - 1`` target classes instead of 9 (the reference would index past the
last class). For 10 or more classes nothing changes.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from atzoo.attacks.mode import attack_mode, frozen_parameters
from atzoo.attacks.sharding import ChunkResult, ProcessGroup, ShardedRun
from atzoo.errors import ConfigError

AA_VERSIONS: tuple[str, ...] = ("standard", "plus", "rand", "custom")
AA_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
#: The attacks each version runs (the reference's ``set_version``).
VERSION_ATTACKS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
#: Fewest classes an attack's loss needs: the DLR loss divides by the gap between the
#: largest and the 3rd largest logit, its targeted form by the gap to the 4th (Croce &
#: Hein 2020, eq. 6 and 7); with fewer classes the reference indexes past the logits.
MIN_CLASSES: dict[str, int] = {"apgd-dlr": 3, "apgd-t": 4}
_NORMS = {"linf": "Linf", "l2": "L2"}
#: Default examples per chunk: 1000 examples make 8 chunks (one per GPU on an 8-GPU node).
DEFAULT_CHUNK_SIZE = 125


@dataclass
class AutoAttackResult:
    """Per-example outcome of an AutoAttack run over ``n`` examples.

    Attributes:
        clean_flags: ``(n,)`` bool, the model classifies the clean example correctly.
        robust_flags: ``(n,)`` bool, no attack of the ensemble fooled the model.
        settings: package, version, attacks run, norm, eps, seed, chunk size, ...
    """

    clean_flags: Tensor
    robust_flags: Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.robust_flags.numel())

    @property
    def robust_acc(self) -> float:
        """Robust accuracy in percent."""
        return 100.0 * self.robust_flags.float().mean().item() if self.n else float("nan")

    @property
    def clean_acc(self) -> float:
        """Clean accuracy on the same examples, in percent."""
        return 100.0 * self.clean_flags.float().mean().item() if self.n else float("nan")


def autoattack_package() -> ModuleType:
    """The reference ``autoattack`` package if installed, else ``pyautoattack``."""
    try:
        return importlib.import_module("autoattack")
    except ImportError:
        return importlib.import_module("pyautoattack")


def package_label(pkg: ModuleType) -> str:
    """``name version`` of the AutoAttack package in use (for the eval settings)."""
    return f"{pkg.__name__} {getattr(pkg, '__version__', 'unknown')}".strip()


def check_autoattack_args(norm: str, eps: float, version: str, attacks: Sequence[str] | None) -> None:
    """Raises ConfigError (one line) for an invalid AutoAttack setting."""
    if norm not in _NORMS:
        raise ConfigError(f"AutoAttack norm must be one of {', '.join(_NORMS)}, got {norm!r}")
    if not (isinstance(eps, (int, float)) and 0 < eps <= 1):
        raise ConfigError(f"AutoAttack eps must be in (0, 1], got {eps!r}")
    if version not in AA_VERSIONS:
        raise ConfigError(f"AutoAttack version must be one of {', '.join(AA_VERSIONS)}, got {version!r}")
    if version == "custom":
        if not attacks:
            raise ConfigError(f"AutoAttack version 'custom' needs a list of attacks from {', '.join(AA_ATTACKS)}")
        unknown = [a for a in attacks if a not in AA_ATTACKS]
        if unknown:
            raise ConfigError(f"unknown AutoAttack attack '{unknown[0]}'. Valid choices: {', '.join(AA_ATTACKS)}")
    elif attacks:
        raise ConfigError(f"AutoAttack attacks can only be chosen with version 'custom', not {version!r}")


def check_autoattack_classes(version: str, attacks: Sequence[str] | None, num_classes: int, dataset: str) -> None:
    """Refuses an AutoAttack whose losses need more classes than ``dataset`` has.

    Raises:
        ConfigError: naming the attack, the classes it needs and what runs instead.
    """
    chosen = list(attacks or []) if version == "custom" else list(VERSION_ATTACKS.get(version, ()))
    too_few = [a for a in chosen if num_classes < MIN_CLASSES.get(a, 2)]
    if not too_few:
        return
    usable = [v for v, run in VERSION_ATTACKS.items() if all(num_classes >= MIN_CLASSES.get(a, 2) for a in run)]
    works = [a for a in AA_ATTACKS if num_classes >= MIN_CLASSES.get(a, 2)]
    instead = f"version {usable[0]!r} or " if usable else ""
    raise ConfigError(
        f"AutoAttack {version!r} runs {too_few[0]}, whose DLR loss needs at least {MIN_CLASSES[too_few[0]]} classes, "
        f"but dataset '{dataset}' has {num_classes}; use {instead}version 'custom' with {', '.join(works)} "
        "(atzoo eval --aa-version custom --aa-attacks ...), or leave 'aa' out of the attacks"
    )


def build_adversary(
    model: nn.Module, *, norm: str, eps: float, version: str, attacks: Sequence[str] | None,
    seed: int, device: torch.device, num_classes: int,
) -> Any:
    """The package's ``AutoAttack`` object, built with whichever API the package has."""
    cls = autoattack_package().AutoAttack
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {"norm": _NORMS[norm], "eps": float(eps), "version": version, "seed": seed,
                              "device": device}
    if version == "custom":
        kwargs["attacks_to_run" if "attacks_to_run" in params else "attacks"] = list(attacks or [])
    if "verbose" in params:
        kwargs["verbose"] = False
    adversary = cls(model, **kwargs)
    _limit_target_classes(adversary, num_classes)
    return adversary


def _limit_target_classes(adversary: Any, num_classes: int) -> None:
    """At most ``num_classes - 1`` target classes for APGD-T and FAB-T (see module doc)."""
    for attr in ("apgd_targeted", "fab"):
        attack = getattr(adversary, attr, None)
        if attack is not None and getattr(attack, "n_target_classes", 0) > num_classes - 1:
            attack.n_target_classes = max(num_classes - 1, 1)


def run_adversary(adversary: Any, x: Tensor, y: Tensor) -> Tensor:
    """Runs the package on ``(x, y)`` as ONE batch; returns the per-example robust flags."""
    method = adversary.run_standard_evaluation
    params = inspect.signature(method).parameters
    if "bs" in params:  # reference API
        extra = {"return_labels": True} if "return_labels" in params else {}
        out = method(x, y, bs=x.shape[0], **extra)
    else:  # pyautoattack: keyword-only batch_size
        out = method(x, y, batch_size=x.shape[0])
    if isinstance(out, tuple):
        # y_adv starts as the clean prediction and becomes the adversarial one for every
        # example an attack fooled, so y_adv == y exactly marks the robust examples.
        return out[1].eq(y).cpu()
    with torch.no_grad():
        return adversary.model(out).argmax(dim=1).eq(y).cpu()


#: ``on_attack(chunk_index, attack, robust, examples)``: after each attack of a chunk, the
#: attack's name (``apgd-ce``, ``apgd-t``, ...), the chunk's examples still robust and its size.
AttackObserver = Callable[[int, str, int, int], None]

#: The package's attack objects, each run by ``run_standard_evaluation`` through ``perturb``.
_ATTACK_OBJECTS = ("apgd", "apgd_targeted", "fab", "square")


def _attack_name(attr: str, attack: Any) -> str:
    """The ensemble's name of the attack an object is about to run (the package switches
    ``apgd.loss`` between ce/dlr and ``fab.targeted`` on one object)."""
    if attr == "apgd":
        return f"apgd-{getattr(attack, 'loss', 'ce')}"
    if attr == "fab":
        return "fab-t" if getattr(attack, "targeted", False) else "fab"
    return {"apgd_targeted": "apgd-t"}.get(attr, attr)


@contextmanager
def watch_attacks(adversary: Any, model: nn.Module, report: Callable[[str, int], None]) -> Iterator[None]:
    """Calls ``report(attack, fooled)`` after each attack the package runs, where ``fooled``
    counts the examples it was given that its output misclassifies.

    The reference code reports nothing between attacks (its ``verbose`` output is a log);
    each attack object's ``perturb`` is wrapped for the duration (one extra forward pass
    per attack, no randomness, so the flags are those of an unwatched run).
    """
    wrapped = []
    for attr in _ATTACK_OBJECTS:
        attack = getattr(adversary, attr, None)
        original = getattr(attack, "perturb", None)
        if original is None:
            continue

        def perturb(x: Tensor, y: Tensor, *args: Any, _original: Any = original, _attr: str = attr,
                    _attack: Any = attack, **kwargs: Any) -> Tensor:
            name = _attack_name(_attr, _attack)
            adv = _original(x, y, *args, **kwargs)
            with torch.no_grad():
                fooled = int(model(adv).argmax(dim=1).ne(y).sum())
            report(name, fooled)
            return adv

        attack.perturb = perturb  # an instance attribute shadows the method
        wrapped.append(attack)
    try:
        yield
    finally:
        for attack in wrapped:
            del attack.perturb


def autoattack_chunk(adversary: Any, model: nn.Module, x: Tensor, y: Tensor, seed: int,
                     on_attack: Callable[[str, int, int], None] | None = None) -> ChunkResult:
    """Clean and robust flags of one chunk, with the package seeded by ``seed``.

    The global RNG state is saved and restored around the call (the reference code calls
    ``torch.manual_seed``), and parameters are frozen so that FAB's ``backward()``
    leaves no parameter gradient. ``on_attack(attack, robust, examples)`` follows the
    ensemble attack by attack (:func:`watch_attacks`).
    """
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), frozen_parameters(model):
        adversary.seed = seed
        with torch.no_grad():
            clean = model(x).argmax(dim=1).eq(y).cpu()
        if on_attack is None:
            robust = run_adversary(adversary, x, y) & clean
        else:
            left = [int(clean.sum())]

            def report(attack: str, fooled: int) -> None:
                left[0] -= fooled
                on_attack(attack, left[0], int(x.shape[0]))

            with watch_attacks(adversary, model, report):
                robust = run_adversary(adversary, x, y) & clean
    return {"clean": clean.tolist(), "robust": robust.tolist()}


def fingerprint(model: nn.Module, x: Tensor, y: Tensor, settings: dict[str, Any]) -> str:
    """SHA-256 of the model's state, the data and the settings (identifies a run's state)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for tensor in (x, y):
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(repr(sorted(settings.items())).encode())
    return digest.hexdigest()


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    n_ex: int | None = None,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    state_path: str | Path | None = None,
    group: ProcessGroup | None = None,
    on_chunk_done: Callable[[int, ChunkResult], None] | None = None,
    on_plan: Callable[[list[int]], None] | None = None,
    on_attack: AttackObserver | None = None,
) -> AutoAttackResult:
    """AutoAttack on the first ``n_ex`` examples, sharded over processes and resumable.

    Every process must call this with the same model, data and settings; each attacks
    its contiguous block of chunks on the model's device and the flags are gathered.

    Args:
        model: classifier returning logits (wrappers are removed; eval mode is used and
            every submodule's mode is restored afterwards).
        x: images in [0, 1] (any device; chunks are moved to the model's device).
        y: labels.
        eps: radius of the threat model.
        norm: ``"linf"`` or ``"l2"``.
        version: ``"standard"``, ``"plus"``, ``"rand"`` or ``"custom"``.
        attacks: the attacks for ``version="custom"`` (subset of :data:`AA_ATTACKS`).
        n_ex: number of examples (the first ones); ``None`` for all.
        seed: base seed; chunk ``i`` runs with ``seed + i``.
        chunk_size: examples per chunk (a batch of the reference code). Results depend
            on it, not on the number of processes.
        state_path: JSON file recording finished chunks, for resuming.
        group: process group (default: the initialised torch.distributed group, if any).
        on_chunk_done: called with ``(chunk_index, flags)`` after each finished chunk.
        on_plan: called with the chunk indices this process will compute.
        on_attack: called after each attack of each chunk this process computes, with
            ``(chunk_index, attack, robust, examples)`` (progress inside AutoAttack).

    Returns:
        An :class:`AutoAttackResult` for the ``n_ex`` examples, identical on every process.
    """
    check_autoattack_args(norm, eps, version, attacks)
    n = x.shape[0] if n_ex is None else min(int(n_ex), x.shape[0])
    if n < 1:
        raise ConfigError(f"AutoAttack needs at least one example, got n_ex={n_ex}")
    x, y = x[:n], y[:n]
    group = group or ProcessGroup.current()
    with attack_mode(model, "eval", None) as net:
        device = _model_device(net, x)
        with torch.no_grad():
            num_classes = int(net(x[:1].to(device)).shape[1])
        adversary = build_adversary(net, norm=norm, eps=eps, version=version, attacks=attacks, seed=seed,
                                    device=device, num_classes=num_classes)
        settings = _settings(adversary, norm=norm, eps=eps, version=version, n=n, seed=seed,
                             chunk_size=chunk_size)

        def work(index: int, start: int, stop: int) -> ChunkResult:
            observe = None if on_attack is None else (
                lambda attack, robust, examples: on_attack(index, attack, robust, examples))
            return autoattack_chunk(adversary, net, x[start:stop].to(device), y[start:stop].to(device),
                                    seed + index, on_attack=observe)

        runner = ShardedRun(n=n, chunk_size=chunk_size, group=group,
                            state_path=Path(state_path) if state_path is not None else None,
                            fingerprint=fingerprint(net, x, y, settings), settings=settings)
        flags = runner.run(work, on_chunk_done=on_chunk_done, on_plan=on_plan)
    return AutoAttackResult(clean_flags=torch.tensor(flags["clean"], dtype=torch.bool),
                            robust_flags=torch.tensor(flags["robust"], dtype=torch.bool), settings=settings)


def _model_device(model: nn.Module, fallback: Tensor) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return fallback.device


def _settings(adversary: Any, *, norm: str, eps: float, version: str, n: int, seed: int,
              chunk_size: int) -> dict[str, Any]:
    """The settings recorded in eval.json and in the state file's fingerprint."""
    targeted = getattr(adversary, "apgd_targeted", None)
    return {
        "package": package_label(autoattack_package()),
        "version": version,
        "attacks": list(adversary.attacks_to_run),
        "norm": norm,
        "eps": float(eps),
        "n_ex": n,
        "seed": seed,
        "chunk_size": chunk_size,
        "n_target_classes": getattr(targeted, "n_target_classes", None),
    }
