"""The run's Accelerator, trackers and process arithmetic (built once, here).

:func:`new_accelerator` is the one place an ``accelerate.Accelerator`` is created; the
engine (:func:`make_accelerator`) and ``atzoo bench`` call it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

from atzoo import precision as prec
from atzoo.config import RunConfig
from atzoo.errors import ConfigError
from atzoo.methods.base import Method


def new_accelerator(precision: str, *, cpu: bool | None = None, grad_accum: int = 1, run_dir: Path | None = None,
                    trackers: list[Any] | None = None, find_unused_parameters: bool = False,
                    what: str = "run.precision") -> Accelerator:
    """An Accelerator with ``precision`` (``no``/``fp32``/``bf16``/``fp16``).

    The device (``cpu=None``: an accelerator when one is present) and the distributed
    setting (``torchrun``/``accelerate launch``) come from the environment, as Accelerate
    detects them. Accelerate keeps one process-wide state: a second Accelerator in the
    same process must use the same precision (a new process, e.g. the CLI, always can).

    Raises:
        ConfigError: ``precision`` cannot be used here (one line, naming ``what``).
    """
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir)) if run_dir else None
    try:
        return Accelerator(
            mixed_precision=prec.accelerate_name(precision),
            gradient_accumulation_steps=grad_accum,
            log_with=trackers or None,
            project_config=project,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
            step_scheduler_with_optimizer=False,
            # Accelerate treats a torchrun launch as multi-CPU (gloo) only when told cpu=True.
            cpu=not accelerator_available() if cpu is None else cpu,
        )
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{what}={precision} cannot be used here: {first}") from None


def make_accelerator(cfg: RunConfig, run_dir: Path, trackers: list[str], method: Method) -> Accelerator:
    """The run's Accelerator: precision, accumulation, trackers, DDP options.

    Raises:
        ConfigError: a phase's precision is not available on the device (before any write).
    """
    from atzoo.engine.trackers import tracker_objects

    accelerator = new_accelerator(cfg.run.precision, grad_accum=cfg.optim.grad_accum, run_dir=run_dir,
                                  trackers=tracker_objects(trackers, run_dir),
                                  find_unused_parameters=bool(getattr(method, "find_unused_parameters", False)))
    check_precisions(cfg, accelerator.device)
    return accelerator


def check_precisions(cfg: RunConfig, device: torch.device) -> None:
    """Refuses (one line) a phase precision the device lacks: training, attack, evaluation."""
    prec.check_supported(cfg.run.precision, device, "run.precision")
    prec.check_supported(prec.attack_precision(cfg.attack.precision, cfg.run.precision), device, "attack.precision")
    prec.check_supported(cfg.eval.precision, device, "eval.precision")


def accelerator_available() -> bool:
    """Whether torch sees a GPU or another accelerator (else training runs on the CPU)."""
    accel = getattr(torch, "accelerator", None)
    if accel is not None and hasattr(accel, "is_available"):
        return bool(accel.is_available())
    return torch.cuda.is_available()


def select_trackers(names: list[str]) -> list[str]:
    """The requested Accelerate trackers that are installed (unknown names are an error)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    known = sorted(LOGGER_TYPE_TO_CLASS)
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown tracker '{name}' in run.trackers. Valid choices: {', '.join(known)}")
    available = {str(t) for t in get_available_trackers()}
    return [name for name in dict.fromkeys(names) if name in available]


def per_process_batch(batch_size: int, num_processes: int) -> int:
    """``data.batch_size`` split over processes (it must divide evenly)."""
    if batch_size % num_processes:
        raise ConfigError(
            f"data.batch_size={batch_size} is not divisible by the {num_processes} processes; "
            f"use a multiple of {num_processes}"
        )
    return batch_size // num_processes


