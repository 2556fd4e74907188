"""Weight averaging (SWA, EMA) with ``torch.optim.swa_utils`` and BN recalibration.

* SWA (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
  Generalization", UAI 2018): from epoch ``averaging.swa_start_epoch`` (0-based) on,
  every ``averaging.swa_every_steps`` optimizer steps the running mean of the weights
  is updated, ``w_swa <- (n * w_swa + w) / (n + 1)`` (eq. 1 of the paper). Only the
  parameters are averaged; BatchNorm statistics of the average are recomputed at the end
  (:func:`recompute_bn_stats`). AR-AT+SWA (Waseda et al. 2025) averages every 500 steps
  from 0-based epoch 75 (the official ARAT+SWA scripts pass ``--swa_start 76``, checked as
  ``swa_start <= epoch`` on 1-based epochs, futakw/AR-AT train_ARAT.py:191; 50 is only the
  argparse default; the paper gives no start) and recomputes the statistics on PGD-10 adversarial inputs through the
  ``adv`` BN route, which is what the engine does.
* EMA: ``w_ema <- d * w_ema + (1 - d) * w`` after every optimizer step, buffers
  included (``use_buffers=True``), so no recalibration is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn

from atzoo.config import AveragingConfig
from atzoo.errors import ConfigError


def averaging_kind(cfg: AveragingConfig) -> str | None:
    """``"swa"``, ``"ema"`` or None.

    Raises:
        ConfigError: both are on (the exported model can only be one average).
    """
    if cfg.swa and cfg.ema:
        raise ConfigError("averaging.swa and averaging.ema are both on; choose one")
    return "swa" if cfg.swa else ("ema" if cfg.ema else None)


class WeightAverage:
    """An :class:`AveragedModel` of the training network and its update rule.

    Args:
        model: the unwrapped network (after ``accelerator.prepare``, on its device).
        cfg: the ``averaging`` section.
    """

    def __init__(self, model: nn.Module, cfg: AveragingConfig) -> None:
        self.kind = averaging_kind(cfg)
        self.cfg = cfg
        self.averaged: AveragedModel | None = None
        if self.kind == "swa":
            self.averaged = AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn(), use_buffers=False)
        elif self.kind == "ema":
            self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if self.averaged is not None:
            self.averaged.requires_grad_(False)

    @property
    def enabled(self) -> bool:
        return self.averaged is not None

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged.item()) if self.averaged is not None else 0

    def due(self, epoch: int, global_step: int) -> bool:
        """Whether the optimizer step ``global_step`` (1-based count) updates the average."""
        if self.kind == "ema":
            return True
        if self.kind == "swa":
            return epoch >= self.cfg.swa_start_epoch and global_step % self.cfg.swa_every_steps == 0
        return False

    @torch.no_grad()
    def maybe_update(self, model: nn.Module, epoch: int, global_step: int) -> bool:
        """Folds ``model``'s current weights into the average when :meth:`due`."""
        if self.averaged is None or not self.due(epoch, global_step):
            return False
        self.averaged.update_parameters(model)
        return True

    def module(self) -> nn.Module:
        """The averaged network (an error to call when averaging is off)."""
        assert self.averaged is not None, "weight averaging is off"
        return self.averaged.module

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.averaged is None else dict(self.averaged.state_dict())

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.averaged is not None:
            self.averaged.load_state_dict(state)


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer that tracks running statistics."""
    return [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _snapshot(bns: list[nn.modules.batchnorm._BatchNorm]) -> list[dict[str, Tensor]]:
    return [{k: v.detach().clone() for k, v in bn.named_buffers()} for bn in bns]


def _restore(bns: list[nn.modules.batchnorm._BatchNorm], saved: list[dict[str, Tensor]]) -> None:
    with torch.no_grad():
        for bn, buffers in zip(bns, saved):
            for name, value in bn.named_buffers():
                value.copy_(buffers[name])


def recompute_bn_stats(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    make_adversarial: Callable[[nn.Module, Tensor, Tensor], Tensor],
    *,
    route: str | None = None,
    reduce_mean: Callable[[Tensor], Tensor] | None = None,
) -> int:
    """Recomputes BatchNorm running statistics on adversarial inputs (SWA's ``update_bn``).

    Like :func:`torch.optim.swa_utils.update_bn`, the statistics are reset and
    re-estimated as the cumulative average over one pass (``momentum=None``), but each
    batch is first replaced by ``make_adversarial(model, x, y)``. The attack may run the
    model in train mode (batch statistics, as the statistics being rebuilt cannot be
    used yet); whatever it does to the running statistics is undone, so only the forward
    pass on the finished adversarial batch counts.

    Args:
        model: the network (the SWA average), unwrapped.
        batches: ``(x, y)`` batches of training data on the model's device.
        make_adversarial: the attack (e.g. PGD-10 with the training-attack settings).
        route: the BN route of a routed-BN model to recompute (the method's ``attack_route``); None for
            plain models.
        reduce_mean: averages a tensor over processes, so every rank ends with the same
            statistics (identity with one process).

    Returns:
        The number of batches used.
    """
    bns = batchnorms(model)
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    count = 0
    with _route(model, route):
        model.train()
        for x, y in batches:
            saved = _snapshot(bns)
            x_adv = make_adversarial(model, x, y)
            _restore(bns, saved)
            with torch.no_grad():
                model(x_adv)
            count += 1
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.train(was_training)
    if reduce_mean is not None:
        _average_over_processes(bns, reduce_mean)
    return count


def _route(model: nn.Module, route: str | None) -> Any:
    if route is None:
        return nullcontext(model)
    from atzoo.models.routed_bn import bn_route

    return bn_route(model, route)


def _average_over_processes(bns: list[nn.modules.batchnorm._BatchNorm], reduce_mean: Callable[[Tensor], Tensor]) -> None:
    """Every rank saw its own shard; the mean of the per-rank statistics is shared by all."""
    with torch.no_grad():
        for bn in bns:
            if bn.running_mean is not None:
                bn.running_mean.copy_(reduce_mean(bn.running_mean))
            if bn.running_var is not None:
                bn.running_var.copy_(reduce_mean(bn.running_var))
