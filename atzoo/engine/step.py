"""The one training step: what the trainer, ``atzoo bench step-cost`` and the diagnostics run.

For one loader batch (see the hook contract in :mod:`atzoo.methods.base`)::

    with accelerator.accumulate(wrapped):
        with autocast(run.precision):                        # the step's own context, not accelerator.autocast()
            with autocast(attack.precision):                 # the attack's own precision
                x_adv = method.attack(model, modules, x, y)  # unwrapped network
            method.before_step(step)
            parts, logits, stats = wrapped(x, x_adv, y)      # ONE forward of the prepared module
        loss = float32 sum of parts; check(loss)             # e.g. stop on NaN before the weights
        accelerator.backward(loss); clip (when synced)
        method.before_optimizer_step(step)
        optimizer.step(); optimizer.zero_grad()
        method.after_optimizer_step(step)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from atzoo import precision as prec
from atzoo.engine.module import TrainingModule
from atzoo.methods.base import Method, StepContext, total_loss


@dataclass
class StepRunner:
    """Everything one training step touches, as the engine prepared it.

    Attributes:
        accelerator: the run's ``accelerate.Accelerator``.
        core: the :class:`TrainingModule` (unwrapped); ``wrapped``: what ``prepare`` returned.
        optimizer: the prepared optimizer.
        channels_last: NHWC input (``model.channels_last``).
        grad_clip: ``optim.grad_clip`` (None: no clipping).
        run_precision: ``run.precision``, the autocast of the training forward (the
            Accelerator's own mixed precision: the same, plus fp16's loss scaler).
        attack_precision: the concrete precision of the training attack (``attack.precision``).
    """

    accelerator: Any
    core: TrainingModule
    wrapped: nn.Module
    optimizer: Any
    channels_last: bool = False
    grad_clip: float | None = None
    run_precision: str = "fp32"
    attack_precision: str = "fp32"

    @property
    def method(self) -> Method:
        return self.core.method

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.core.parameters() if p.requires_grad]


@dataclass
class StepOutput:
    """One step's batch (as trained on), adversarial batch, loss parts, loss, logits and stats."""

    x: Tensor
    x_adv: Tensor | None
    y: Tensor
    parts: dict[str, Tensor]
    loss: Tensor
    logits: Tensor
    stats: dict[str, float]


def train_step(
    r: StepRunner, x: Tensor, y: Tensor, *, epoch: int = 0, global_step: int = 0,
    check: Callable[[StepOutput], None] | None = None, phase: Callable[[str], None] | None = None,
    forward_context: AbstractContextManager[Any] | None = None,
) -> StepOutput:
    """Runs one training step (see the module docstring) and returns what it computed.

    Args:
        epoch, global_step: where training is (for the method's step hooks).
        check: called with the step's output after the forward, before the backward
            (the trainer's finite-loss check; raising stops before any weight changes).
        phase: told ``"attack"`` then ``"loss"`` (the benchmark's pass counter).
        forward_context: a context manager around the training forward (instrumentation).
    """
    acc, method = r.accelerator, r.method
    if r.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    tell = phase or (lambda name: None)
    with acc.accumulate(r.wrapped):
        step = StepContext(epoch=epoch, global_step=global_step, model=r.core.model, modules=r.core.method_modules,
                           x=x, x_adv=None, y=y, lr=float(r.optimizer.param_groups[0]["lr"]),
                           synced=bool(acc.sync_gradients), all_reduce_sum=lambda t: acc.reduce(t, "sum"))
        # The step's own autocast contexts (not acc.autocast()), so that runners of different
        # precisions can share one process and Accelerator (atzoo bench step-cost).
        with prec.autocast(r.run_precision, x.device):
            tell("attack")
            # The attack runs on the unwrapped network: input gradients only, no DDP hooks,
            # in its own precision (attack.precision may differ from run.precision).
            with prec.autocast(r.attack_precision, x.device):
                step.x_adv = method.attack(r.core.model, r.core.method_modules, x, y)
            tell("loss")
            method.before_step(step)
            with forward_context if forward_context is not None else nullcontext():
                parts, logits, stats = r.wrapped(x, step.x_adv, y)
        out = StepOutput(x, step.x_adv, y, parts, total_loss(parts), logits, stats)
        if check is not None:
            check(out)
        acc.backward(out.loss)
        if acc.sync_gradients and r.grad_clip is not None:
            acc.clip_grad_norm_(r.trainable(), r.grad_clip)
        method.before_optimizer_step(step)
        r.optimizer.step()
        r.optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(step)
    return out

