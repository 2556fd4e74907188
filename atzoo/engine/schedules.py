"""Learning-rate schedules as step-wise multipliers of ``optim.lr``.

Every schedule is a function ``factor(step) -> float`` of the optimizer-step index
(0-based, counted over the whole run) wrapped in :class:`torch.optim.lr_scheduler.LambdaLR`,
which the engine steps once per optimizer update. Epoch-based settings (milestones,
warm-up) are converted with ``steps_per_epoch``, so a resumed run and an uninterrupted
one see the same learning rate at every step.

Epoch numbers in the config are 0-based epoch indices: ``milestones: [75, 90]`` means
the learning rate is multiplied by ``lr_decay`` from the 76th and the 91st epoch on,
like :class:`torch.optim.lr_scheduler.MultiStepLR` stepped once per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from atzoo.config import OptimConfig
from atzoo.config.schema import WARMUP_MIN_STEPS
from atzoo.errors import ConfigError

#: one-cycle constants, the defaults of :class:`torch.optim.lr_scheduler.OneCycleLR`.
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4

SCHEDULES = ("piecewise", "cosine", "onecycle", "constant")


def piecewise_factor(optim: OptimConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Warm-up epochs at ``warmup_lr``, then ``lr`` times ``lr_decay`` per milestone passed.

    This is the AR-AT/LBGAT schedule (lr 0.02 during the first epoch, then 0.1, x0.1 at
    epochs 75 and 90) and, with ``warmup_lr: null``, Madry et al.'s step schedule.
    """
    warmup = optim.warmup_lr / optim.lr if optim.warmup_lr is not None else None
    warmup_steps = warmup_length(optim.warmup_epochs, steps_per_epoch)
    milestones = sorted(optim.milestones)

    def factor(step: int) -> float:
        epoch = step // steps_per_epoch
        if warmup is not None and step < warmup_steps:
            return warmup
        return optim.lr_decay ** sum(epoch >= m for m in milestones)

    return factor


def warmup_length(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Warm-up in optimizer steps: ``warmup_epochs`` of them, but at least
    ``min(WARMUP_MIN_STEPS, one epoch)`` when there is a warm-up at all.

    A rescaled schedule (``--epochs 1`` on a 100-epoch recipe) keeps the warm-up as a
    fraction of the run, 0.01 epoch; rounded to steps that is none, and the first steps at
    the full learning rate are what the warm-up was there to prevent.
    """
    if warmup_epochs <= 0:
        return 0
    return max(round(warmup_epochs * steps_per_epoch), min(WARMUP_MIN_STEPS, steps_per_epoch))


def cosine_factor(total_steps: int) -> Callable[[int], float]:
    """Cosine annealing from ``lr`` to 0 over the run (Loshchilov & Hutter 2017, eq. 5)."""

    def factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))

    return factor


def onecycle_factor(total_steps: int) -> Callable[[int], float]:
    """Linear one-cycle (Smith & Topin 2019): ``lr/25`` up to ``lr`` over the first 30%
    of the steps, then down to ``lr/25/1e4``.

    Identical to ``OneCycleLR(max_lr=lr, total_steps, anneal_strategy="linear")`` (the
    tests check it), but without momentum cycling: momentum stays ``optim.momentum``.
    """
    start = 1.0 / ONECYCLE_DIV_FACTOR
    end = start / ONECYCLE_FINAL_DIV_FACTOR
    peak_step = float(ONECYCLE_PCT_START * total_steps) - 1
    last_step = float(total_steps - 1)

    def factor(step: int) -> float:
        step = min(step, total_steps - 1)
        if step <= peak_step:
            return start + (1.0 - start) * step / peak_step
        return 1.0 + (end - 1.0) * (step - peak_step) / (last_step - peak_step)

    return factor


def lr_factor(optim: OptimConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of ``optim.lr`` at each optimizer step for ``optim.schedule``.

    Args:
        optim: the optimiser section of the run config.
        steps_per_epoch: optimizer updates per epoch (batches // grad_accum).

    Raises:
        ConfigError: ``steps_per_epoch`` < 1, or a one-cycle run too short to have a
            warm-up phase.
    """
    if steps_per_epoch < 1:
        raise ConfigError(f"an epoch must have at least one optimizer step, got {steps_per_epoch}")
    total = optim.epochs * steps_per_epoch
    if optim.schedule == "piecewise":
        return piecewise_factor(optim, steps_per_epoch)
    if optim.schedule == "cosine":
        return cosine_factor(total)
    if optim.schedule == "onecycle":
        if ONECYCLE_PCT_START * total < 2:
            raise ConfigError(f"optim.schedule=onecycle needs at least 7 optimizer steps, got {total}")
        return onecycle_factor(total)
    if optim.schedule == "constant":
        return lambda step: 1.0
    raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {optim.schedule!r}")


def build_scheduler(optimizer: Optimizer, optim: OptimConfig, steps_per_epoch: int) -> LambdaLR:
    """A :class:`LambdaLR` over ``optimizer`` following ``optim.schedule``.

    The engine calls ``scheduler.step()`` after every optimizer update; its state dict
    holds only step counters (the factor function is rebuilt from the config).
    """
    return LambdaLR(optimizer, lr_factor(optim, steps_per_epoch))
