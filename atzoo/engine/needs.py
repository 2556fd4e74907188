"""What the engine provides for a method's declared needs (:meth:`Method.needs`).

:class:`~atzoo.methods.context.StandardModel` (ARREST without ``method.pretrained``): a
``standard`` run of the same data, model, seed and optimiser, for ``epochs`` epochs with
the milestones scaled to that length, in the sibling run directory ``<run dir>-pretrain``
-- a sibling, so that replacing the main run (``--force``) keeps it. A finished one with
the same settings is reused, an interrupted one resumed, one with other settings is an
error (never silently reused). It is trained before the main run builds anything, as an
ordinary run of its own.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from atzoo.config import RunConfig, read_config_file
from atzoo.engine.resume import config_differences
from atzoo.errors import ConfigError
from atzoo.methods.context import Need, StandardModel

#: Suffix of the sibling run directory a :class:`StandardModel` need is trained in.
PRETRAIN_SUFFIX = "pretrain"

Train = Callable[..., Path]


def satisfy_needs(needs: tuple[Need, ...], cfg: RunConfig, run_dir: Path, train: Train) -> dict[str, Path]:
    """The resources for ``needs`` (``key -> path``), training what is missing with ``train``."""
    resources: dict[str, Path] = {}
    for need in needs:
        if isinstance(need, StandardModel):
            resources[need.key] = standard_model(cfg, run_dir, need.epochs, train)
        else:  # a new kind of need without engine support is a programming error
            raise TypeError(f"the engine cannot provide {need!r}")
    return resources


def pretrain_dir(run_dir: Path) -> Path:
    """``<run dir>-pretrain``: where a :class:`StandardModel` need is trained."""
    return run_dir.with_name(f"{run_dir.name}-{PRETRAIN_SUFFIX}")


def standard_model(cfg: RunConfig, run_dir: Path, epochs: int, train: Train) -> Path:
    """Trains the standard model into :func:`pretrain_dir`, or reuses/resumes the one there."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise ConfigError(
            f"{cfg.method.name} cannot pretrain its standard model inside a distributed run: train it first "
            "with `atzoo train standard` and pass method.pretrained=<its run directory>"
        )
    out = pretrain_dir(run_dir)
    pre = pretrain_config(cfg, epochs)
    if not (out / "config.yaml").is_file():  # new (the engine refuses a non-empty non-run folder)
        return train(pre, out=out)
    check_pretrain_settings(out, pre)
    if (out / "model.safetensors").is_file():
        return out
    return train(pre, out=out, resume=True)


def check_pretrain_settings(out: Path, cfg: RunConfig) -> None:
    """Raises ConfigError when the run in ``out`` was trained with other settings than ``cfg``."""
    saved = read_config_file(out / "config.yaml")
    differences = config_differences(saved, cfg)
    if saved.run.max_steps != cfg.run.max_steps:
        differences.append("run.max_steps")
    if differences:
        raise ConfigError(
            f"{out} holds a standard model trained with other settings ({', '.join(differences)} differ); "
            "remove it, or pass method.pretrained to fine-tune it anyway"
        )


def pretrain_config(run: RunConfig, epochs: int) -> RunConfig:
    """The ``standard`` run that trains the standard model of ``run``.

    Same data, model, seed, precision and optimiser as ``run``, for ``epochs`` epochs with
    the milestones scaled to that length; the default (unused) attack section, so that the
    model does not depend on the main run's attack; no weight averaging, no diagnostics;
    evaluation (when on) measures clean accuracy only.
    """
    from atzoo.config import AttackConfig, AveragingConfig, DiagnosticsConfig, build_method_config, resolve

    scale = epochs / run.optim.epochs
    cfg = copy.deepcopy(run)
    cfg.method = build_method_config({"name": "standard"})
    cfg.optim = dataclasses.replace(
        cfg.optim, epochs=epochs, milestones=[round(m * scale) for m in run.optim.milestones],
        warmup_epochs=min(run.optim.warmup_epochs, epochs),
    )
    cfg.attack, cfg.averaging, cfg.diagnostics = AttackConfig(), AveragingConfig(), DiagnosticsConfig()
    cfg.eval = dataclasses.replace(cfg.eval, attacks=["clean"], invariance=False)
    cfg.run = dataclasses.replace(cfg.run, name=None, out=None)
    return resolve(cfg)
