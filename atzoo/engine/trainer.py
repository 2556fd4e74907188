"""``train()``: the one Accelerate training loop every method runs through.

Reading order: :func:`train` checks the config and directory, satisfies the method's
declared needs (:mod:`atzoo.engine.needs`, e.g. ARREST's standard model), builds the
method (:func:`~atzoo.methods.create_method`: its config and a
:class:`~atzoo.methods.context.MethodContext`) and a :class:`Trainer`, which

1. builds data, model and method modules (``method.prepare_model``,
   ``method.build_modules``), wraps them in a :class:`~atzoo.engine.module.TrainingModule`
   and calls ``accelerator.prepare`` once on it and the SGD optimizer;
2. opens the run directory (:mod:`atzoo.engine.resume`: fresh, ``--force`` or ``--resume``
   from the newest good checkpoint, restoring weights, optimizer, scheduler, method
   state, averages, RNG);
3. loops over epochs: ``method.on_epoch_start``, then per batch the one training step
   (:mod:`atzoo.engine.step`: attack, method hooks, one forward of the prepared module,
   backward, clipping, optimizer step), then scheduler, SWA/EMA, logging
   (:mod:`atzoo.engine.logs`) and checkpoints;
4. finishes (:mod:`atzoo.engine.finish`): a final checkpoint, BN recalibration of the SWA
   average, the exported model (``model.safetensors`` + ``model_meta.json``) and ``eval.json``.

Batches: ``data.batch_size`` is the global batch of one forward pass, split evenly over
the processes; with ``optim.grad_accum = k`` each optimizer step sees ``k`` of them.
Counters: ``epoch`` (0-based), ``batch`` (loader batches of that epoch consumed) and
``global_step`` (optimizer steps). Checkpoints are taken only between optimizer steps.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor, nn

from atzoo import precision
from atzoo.files.common import MAX_SEED
from atzoo.config import RunConfig
from atzoo.engine.accelerator import make_accelerator, per_process_batch, select_trackers
from atzoo.engine.averaging import WeightAverage, averaging_kind
from atzoo.engine.checkpoint import crash_point
from atzoo.engine.cost import CostMeter, hardware_profile
from atzoo.engine.finish import Finishing
from atzoo.engine.logs import Meter, StepValues
from atzoo.engine.module import TrainingModule
from atzoo.engine.needs import satisfy_needs
from atzoo.engine.progress import Reporter
from atzoo.engine.preflight import check_evaluation, check_settings
from atzoo.engine.resume import Position, check_resume_config, config_differences
from atzoo.engine.rundir import MetricsLog, RunDirClaim, check_run_dir, resolve_run_dir
from atzoo.engine.schedules import build_scheduler
from atzoo.engine.step import StepOutput, StepRunner, train_step
from atzoo.engine.validation import Validator, carve_validation, epoch_line, val_size
from atzoo.errors import ConfigError, DataError, InterruptedRun, NonFiniteLossError
from atzoo.methods.base import EpochContext, Method, create_method
from atzoo.registry import METHODS

__all__ = [
    "MAX_SEED", "NonFiniteLossError", "Trainer", "build_model", "build_optimizer", "check_seed",
    "config_differences", "make_accelerator", "per_process_batch", "select_trackers", "train",
]

#: Training samples (unaugmented) that ``EpochContext.calibration_batches`` yields.
CALIBRATION_SAMPLES = 1000


# --------------------------------------------------------------------------- entry point


def train(cfg: RunConfig, *, out: str | Path | None = None, force: bool = False, resume: bool = False,
          notes: list[str] | None = None) -> Path:
    """Trains ``cfg`` and returns the run directory.

    Args:
        cfg: a resolved, validated config (:func:`atzoo.config.build_config`); not changed.
        out: the run directory (default ``run.out``, else ``runs/<name>``).
        force: replace an existing run directory.
        resume: continue the run in the directory from its newest good checkpoint
            (start from scratch when it has none).
        notes: lines about how the config was made (the recipe used, a rescaled
            schedule), printed and logged as ``config`` events once the run starts.

    Raises:
        AtzooError: the directory exists without ``force``/``resume``, the config does
            not fit the data or the checkpoint, or the loss became non-finite. Nothing
            on disk is changed by an error raised before training starts.
    """
    run_dir = resolve_run_dir(cfg, out)
    averaging_kind(cfg.averaging)  # config conflicts first, before anything else
    check_seed(cfg.run.seed)
    check_run_dir(run_dir, force=force, resume=resume)
    extension = check_resume_config(run_dir, cfg) if resume else None
    check_settings(cfg)  # builds SGD once on a dummy tensor (torch's first optimizer costs ~1 s)
    needs = METHODS.get(cfg.method.name).needs(cfg.method)
    resources = satisfy_needs(needs, cfg, run_dir, train)  # e.g. <run dir>-pretrain, a run of its own
    method = create_method(cfg.method.name, cfg, resources=resources)
    trackers = select_trackers(cfg.run.trackers)
    accelerator = make_accelerator(cfg, run_dir, trackers, method)
    trainer = Trainer(cfg, run_dir, accelerator, method)
    if extension:
        trainer.reporter.message(extension)
    if cfg.run.evaluate:
        check_evaluation(cfg, trainer.bundle)
    # The claim creates, locks and (for --force) swaps the directory; an error before the
    # first optimizer step undoes all of it (docs/reliability.md).
    claim = RunDirClaim(run_dir, force=force, resume=resume, enabled=trainer.is_main)
    try:
        with claim:
            trainer.claim = claim
            trainer.open_run_dir(force=force, resume=resume, trackers=trackers)
            for note in notes or []:
                trainer._event("config", note)
            trainer.fit()
            trainer.finish()
    except KeyboardInterrupt:
        kept = resume or claim.is_started
        raise InterruptedRun(f"interrupted; {'the run is in' if kept else 'nothing was changed in'} {run_dir}",
                             run_dir=run_dir, resumable=kept) from None
    return run_dir


def check_seed(seed: int) -> None:
    """``run.seed`` also seeds NumPy, which accepts 0 .. 2**32 - 1 only.

    Raises:
        ConfigError: the seed is outside that range (checked before anything is written).
    """
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"run.seed must be in [0, {MAX_SEED}], got {seed}")


def build_model(cfg: RunConfig, bundle: Any) -> nn.Module:
    """``create_model`` with the dataset's classes, channels and statistics."""
    from atzoo.models import create_model

    for key, data_value in (("num_classes", bundle.num_classes), ("in_channels", bundle.in_channels)):
        given = getattr(cfg.model, key)
        if given is not None and given != data_value:
            raise DataError(f"model.{key}={given} does not match dataset '{cfg.data.name}', which has {data_value}")
    return create_model(
        cfg.model.name, bundle.num_classes, bundle.in_channels,
        normalize=cfg.model.normalize, mean=bundle.mean, std=bundle.std, pretrained=cfg.model.pretrained,
    )


def build_optimizer(module: nn.Module, cfg: RunConfig) -> torch.optim.SGD:
    """SGD over every trainable parameter of the model and the method's modules."""
    o = cfg.optim
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)


# --------------------------------------------------------------------------- the trainer


class Trainer(Finishing):
    """Owns everything one run needs; :func:`train` is its only intended caller.

    The class is split by concern: building and the loop here, logging in
    :class:`~atzoo.engine.logs.Logging`, run directory and checkpoints in
    :class:`~atzoo.engine.resume.RunState`, the end in :class:`~atzoo.engine.finish.Finishing`.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, accelerator: Accelerator, method: Method) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.acc = accelerator
        self.method = method
        self.is_main = accelerator.is_main_process
        self.batch_size = per_process_batch(cfg.data.batch_size, accelerator.num_processes)
        if cfg.run.deterministic:  # cuBLAS needs this for deterministic matmuls on GPUs
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        set_seed(cfg.run.seed, deterministic=cfg.run.deterministic)  # same initial weights on every rank
        self.bundle, val_bundle = self._load_data()
        self.validator = Validator(cfg, val_bundle, accelerator) if val_bundle is not None else None
        self.core = self._build_module()
        self.loader = self._train_loader(augment=cfg.data.augment)
        self.steps_per_epoch = self._steps_per_epoch()
        self.optimizer = build_optimizer(self.core, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch)
        self.wrapped, self.optimizer = accelerator.prepare(self.core, self.optimizer)
        if cfg.model.compile:
            # Compile the network itself, not the training wrapper: the attack calls the
            # unwrapped network (10 of AT's 11 forward passes), so only this way do the
            # attack's passes run compiled too. Methods' own glue stays eager.
            self.core.model.compile()
        self.runner = StepRunner(accelerator, self.core, self.wrapped, self.optimizer,
                                 channels_last=cfg.model.channels_last, grad_clip=cfg.optim.grad_clip,
                                 run_precision=precision.canonical(cfg.run.precision),
                                 attack_precision=precision.attack_precision(cfg.attack.precision, cfg.run.precision))
        self.average = WeightAverage(self.core.model, cfg.averaging)
        self.position = Position()
        self.saved_step: int | None = None
        self.window, self.epoch_meter = Meter(), Meter()
        self.cost = CostMeter(hardware_profile(accelerator.device, accelerator.num_processes,
                                                   precision.profile(cfg.run.precision, cfg.attack.precision)))
        self.last_lr = cfg.optim.lr
        self.resume_metrics_bytes = 0
        self.last_batch: tuple[Tensor, Tensor | None, Tensor, dict[str, float]] | None = None
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=self.is_main)
        self.claim: RunDirClaim | None = None  # train() sets it; open_run_dir() makes one otherwise
        self.reporter = Reporter(enabled=self.is_main, total_steps=self.total_steps())

    # ------------------------------------------------------------------ building
    def _load_data(self) -> Any:
        from atzoo.data import create_dataset

        d = self.cfg.data
        bundle = create_dataset(d.name, root=d.root, download=d.download, train_subset=d.train_subset,
                                test_subset=d.test_subset)
        # eval.val_every: a held-out part of the training set (never the test set) for validation.
        return carve_validation(bundle, val_size(self.cfg, len(bundle.train)))

    def _build_module(self) -> TrainingModule:
        model = self.method.prepare_model(build_model(self.cfg, self.bundle))
        extra = nn.ModuleDict(self.method.build_modules(model))
        core = TrainingModule(model, extra, self.method)
        if self.cfg.model.channels_last:
            core.to(memory_format=torch.channels_last)
        return core

    def _train_loader(self, *, augment: bool) -> Any:
        from atzoo.data import make_train_loader

        return make_train_loader(
            self.bundle, self.batch_size, device=self.acc.device, seed=self.cfg.run.seed,
            rank=self.acc.process_index, world_size=self.acc.num_processes, augment=augment,
            drop_last=True, num_workers=self.cfg.data.num_workers,
        )

    def _steps_per_epoch(self) -> int:
        steps = len(self.loader) // self.cfg.optim.grad_accum
        if steps < 1:
            raise ConfigError(
                f"an epoch has {len(self.loader)} batches per process, fewer than optim.grad_accum="
                f"{self.cfg.optim.grad_accum}; lower data.batch_size or optim.grad_accum"
            )
        return steps

    def total_steps(self) -> int:
        total = self.cfg.optim.epochs * self.steps_per_epoch
        return min(total, self.cfg.run.max_steps) if self.cfg.run.max_steps is not None else total

    @property
    def batches_per_epoch(self) -> int:
        """Loader batches used per epoch: whole optimizer steps only."""
        return self.steps_per_epoch * self.cfg.optim.grad_accum

    def fit(self) -> None:
        """Runs epochs until ``optim.epochs`` or ``run.max_steps``."""
        now = time.perf_counter()  # throughput counts training only, not the set-up
        self.window.started = self.epoch_meter.started = now
        with self.reporter:
            while not self.done():
                self.run_epoch(self.position.epoch)

    def done(self) -> bool:
        return self.position.epoch >= self.cfg.optim.epochs or self.max_steps_reached()

    def max_steps_reached(self) -> bool:
        return self.cfg.run.max_steps is not None and self.position.global_step >= self.cfg.run.max_steps

    def run_epoch(self, epoch: int) -> None:
        """One epoch (or its rest, after a mid-epoch resume)."""
        if self.position.batch == 0:
            self.start_epoch(epoch)
        self.loader.set_epoch(epoch)
        self.acc.step = 0  # accumulation phase; epochs hold whole optimizer steps
        remaining = self.batches_per_epoch - self.position.batch
        for x, y in itertools.islice(self.loader.iter_from(self.position.batch), remaining):
            with self.cost.step():  # CPU and wall time of the step itself (atzoo.engine.cost)
                self.train_batch(x, y)
            if self.acc.sync_gradients and self.after_optimizer_step():
                return  # run.max_steps reached mid-epoch (a checkpoint was written)
        self.end_epoch(epoch)

    def start_epoch(self, epoch: int) -> None:
        """``method.on_epoch_start`` (e.g. AR-AT's auto-balance) and a fresh epoch meter."""
        self.epoch_meter = Meter()
        self.cost.reset()
        context = EpochContext(
            epoch=epoch, model=self.core.model, modules=self.core.method_modules,
            calibration_batches=self._calibration_batches,
            all_reduce_sum=lambda t: self.acc.reduce(t, "sum"),
        )
        stats = self.method.on_epoch_start(context)
        if stats:
            self.metrics.write({"kind": "epoch_start", "epoch": epoch, "step": self.position.global_step,
                                "method": stats})

    def _calibration_batches(self) -> Any:
        from atzoo.data import make_eval_loader

        return make_eval_loader(
            self.bundle, self.cfg.data.eval_batch_size, device=self.acc.device, rank=self.acc.process_index,
            world_size=self.acc.num_processes, split="train", limit=CALIBRATION_SAMPLES,
        )

    # ------------------------------------------------------------------ one batch
    # ------------------------------------------------------------------ one batch
    def train_batch(self, x: Tensor, y: Tensor) -> None:
        """The one training step (:func:`atzoo.engine.step.train_step`) and its bookkeeping."""
        reduced: list[StepValues] = []

        def check(out: StepOutput) -> None:  # before the backward: a NaN never reaches the weights
            reduced.append(self.reduce_step(out.parts, out.loss, out.logits, out.y))
            self.check_finite(reduced[0])

        out = train_step(self.runner, x, y, epoch=self.position.epoch, global_step=self.position.global_step,
                         check=check)
        values = reduced[0]
        self.position.batch += 1
        self.window.add(values.parts, values.loss, values.correct, values.count)
        self.epoch_meter.add(values.parts, values.loss, values.correct, values.count)
        self.last_batch = (out.x, out.x_adv, out.y, out.stats)

    def reduce_step(self, parts: dict[str, Tensor], loss: Tensor, logits: Tensor, y: Tensor) -> StepValues:
        """Loss parts, loss and accuracy averaged over processes (one small all-reduce)."""
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == y).sum().float()
            count = torch.tensor(float(y.numel()), device=loss.device)
            packed = torch.stack([*(p.detach().float() for p in parts.values()), loss.detach(), correct, count])
            values = self.acc.reduce(packed, "sum").tolist()
        world = self.acc.num_processes
        named = {name: values[i] / world for i, name in enumerate(parts)}
        return StepValues(parts=named, loss=values[-3] / world, correct=values[-2], count=values[-1])

    def check_finite(self, values: StepValues) -> None:
        """Stops the run on a NaN/inf loss, before it reaches the weights (all ranks agree)."""
        if math.isfinite(values.loss):
            return
        parts = ", ".join(f"{k}={v:.4g}" for k, v in values.parts.items())
        raise NonFiniteLossError(
            f"non-finite training loss at epoch {self.position.epoch}, step {self.position.global_step + 1} "
            f"({parts}); stopped, last good checkpoint: {self._last_checkpoint()} "
            "(try a lower optim.lr, optim.grad_clip, or run.precision=no)"
        )

    def after_optimizer_step(self) -> bool:
        """Scheduler, averaging, logging and step checkpoints; True when max_steps is reached."""
        if self.claim is not None:
            self.claim.started()  # a --force-replaced old run is deleted only now
        lr = self.last_lr = self.optimizer.param_groups[0]["lr"]  # the lr this step used
        if not self.acc.optimizer_step_was_skipped:  # fp16 overflow: the step did not happen
            self.scheduler.step()
        sync_buffers(self.core, self.acc.num_processes)
        p = self.position
        p.global_step += 1
        self.average.maybe_update(self.core.model, p.epoch, p.global_step)
        self.reporter.advance_to(p.global_step, epoch=p.epoch, lr=lr, **self._bar_fields())
        if p.global_step % self.cfg.run.log_every == 0:
            self.log_window(lr)
        if self.cfg.diagnostics.every > 0 and p.global_step % self.cfg.diagnostics.every == 0:
            self.log_step_diagnostics()
        crash_point("step", p.global_step)  # inert unless ATZOO_TEST_CRASH_AT is set (crash tests)
        end_of_epoch = p.batch >= self.batches_per_epoch
        if self.max_steps_reached() and not end_of_epoch:
            self.log_epoch(p.epoch, partial=True)
            self.save()
            return True
        if self._step_checkpoint_due() and not end_of_epoch:
            self.save()  # at the end of an epoch, end_epoch() writes it after the summary
        return False

    def _step_checkpoint_due(self) -> bool:
        every = self.cfg.run.checkpoint_every_steps
        return every > 0 and self.position.global_step % every == 0

    # ------------------------------------------------------------------ epoch end
    def end_epoch(self, epoch: int) -> None:
        """Epoch summary, validation (if due), then the epoch checkpoint (if due)."""
        self.log_epoch(epoch)
        self.validate(epoch)
        self.position.epoch += 1
        self.position.batch = 0
        every = self.cfg.run.checkpoint_every
        if (every > 0 and self.position.epoch % every == 0) or self._step_checkpoint_due():
            self.save()

    def validate(self, epoch: int) -> None:
        """``eval.val_every``: held-out clean/PGD accuracy to metrics.jsonl, the trackers and
        the console; the most robust weights to ``model_best.safetensors``."""
        row = None
        if self.validator is not None and self.validator.due(epoch):
            row = {**self.validator.run(self.method.export(self.core.model), epoch), "step": self.position.global_step}
            self.metrics.write(row)
            self.track("val", row)
            if row["best"] and self.is_main:
                self.export(self.method.export(self.core.model), "model_best.safetensors", "best")
        self.reporter.message(epoch_line(epoch, self.cfg.optim.epochs, self.epoch_meter.summary(), self.last_lr,
                                         row, self.reporter.eta(self.position.global_step)))


def sync_buffers(module: nn.Module, num_processes: int) -> None:
    """Copies process 0's buffers (BN running statistics) to every process.

    DDP broadcasts buffers at the start of each forward, but each process then updates
    its BN statistics from its own shard. Syncing after every optimizer step makes the
    state at step boundaries (what attacks use next, what a checkpoint holds) the same
    on every process, so a resumed multi-process run continues exactly. One broadcast
    per dtype, of a few thousand numbers for a ResNet.
    """
    if num_processes < 2:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for buffer in module.buffers():
        groups.setdefault((buffer.dtype, buffer.device), []).append(buffer)
    with torch.no_grad():
        for buffers in groups.values():
            flat = torch.cat([b.reshape(-1) for b in buffers])
            torch.distributed.broadcast(flat, src=0)
            offset = 0
            for b in buffers:
                b.copy_(flat[offset: offset + b.numel()].view_as(b))
                offset += b.numel()
