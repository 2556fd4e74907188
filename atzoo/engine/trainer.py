"""``train()``: the one Accelerate training loop every method runs through.

Reading order: :func:`train` checks the config and directory, satisfies the method's
declared needs (:mod:`atzoo.engine.needs`, e.g. ARREST's standard model), builds the
method (:func:`~atzoo.methods.create_method`: its config and a
:class:`~atzoo.methods.context.MethodContext`) and a :class:`Trainer`, which

1. builds data, model and method modules (``method.prepare_model``,
   ``method.build_modules``), wraps them in a :class:`~atzoo.engine.module.TrainingModule`
   and calls ``accelerator.prepare`` once on it and the SGD optimizer;
2. opens the run directory (:class:`~atzoo.engine.resume.CheckpointKeeper`: fresh,
   ``--force`` or ``--resume`` from the newest good checkpoint, restoring weights,
   optimizer, scheduler, method state, averages, RNG);
3. loops over epochs: ``method.on_epoch_start``, then per batch the one training step
   (:mod:`atzoo.engine.step`: attack, method hooks, one forward of the prepared module,
   backward, clipping, optimizer step), then scheduler, SWA/EMA, logging
   (:class:`~atzoo.engine.logs.RunLog`) and checkpoints;
4. finishes (:class:`~atzoo.engine.finish.Finisher`): a final checkpoint, BN recalibration
   of the SWA average, the exported model (``model.safetensors`` + ``model_meta.json``)
   and ``eval.json``.

Batches: ``data.batch_size`` is the global batch of one forward pass, split evenly over
the processes; with ``optim.grad_accum = k`` each optimizer step sees ``k`` of them.
Counters: ``epoch`` (0-based), ``batch`` (loader batches of that epoch consumed) and
``global_step`` (optimizer steps). Checkpoints are taken only between optimizer steps.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor, nn

from atzoo import precision
from atzoo.files.common import MAX_SEED, check_int_range
from atzoo.config import RunConfig
from atzoo.engine.accelerator import make_accelerator, per_process_batch, select_trackers
from atzoo.engine.averaging import WeightAverage, averaging_kind
from atzoo.engine.checkpoint import crash_point
from atzoo.engine.cost import CostMeter, hardware_profile
from atzoo.engine.finish import Finisher
from atzoo.engine.logs import Position, RunLog, StepValues
from atzoo.engine.module import TrainingModule
from atzoo.engine.needs import satisfy_needs
from atzoo.engine.overfit import OverfitWatch, co_enabled, co_text
from atzoo.engine.progress import Reporter
from atzoo.engine.replay import replayed_batches
from atzoo.engine.preflight import check_evaluation, check_settings
from atzoo.engine.resume import CheckpointKeeper, check_resume_config, config_differences
from atzoo.engine.rundir import MetricsLog, RunDirClaim, check_run_dir, resolve_run_dir
from atzoo.engine.schedules import build_scheduler
from atzoo.engine.step import StepOutput, StepRunner, train_step
from atzoo.engine.stop import GracefulStop, StopSignal
from atzoo.engine.validation import Validator, carve_validation, epoch_line, val_size
from atzoo.errors import AtzooError, ConfigError, DataError, InterruptedRun, NonFiniteLossError
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
        with trainer.stop, claim:  # SIGTERM: checkpoint at the next step boundary (engine/stop.py)
            trainer.open_run_dir(force=force, resume=resume, trackers=trackers, claim=claim)
            extra_data = []
            if getattr(trainer.loader, "extra_count", None):
                from atzoo.data.mixing import mixing_line

                extra_data = [mixing_line(trainer.loader)]
            trainer.log_config_notes([*(notes or []), *extra_data])
            trainer.fit()
            trainer.finish()
    except (KeyboardInterrupt, StopSignal) as exc:
        raise interruption(exc, run_dir, kept=resume or claim.is_started,
                           step=trainer.position.global_step) from None
    return run_dir


def interruption(exc: BaseException, run_dir: Path, *, kept: bool, step: int) -> InterruptedRun:
    """The :class:`InterruptedRun` for a run stopped by Ctrl-C or by SIGTERM."""
    if isinstance(exc, StopSignal):
        where = f"after step {step} (checkpoint written)" if exc.checkpointed else "before a step boundary"
        return InterruptedRun(f"stopped by {signal.Signals(exc.signum).name} {where}; "
                              f"{'the run is in' if kept else 'nothing was changed in'} {run_dir}",
                              run_dir=run_dir, resumable=kept, signal_name=signal.Signals(exc.signum).name,
                              exit_code=exc.exit_code, checkpoint_step=step if exc.checkpointed else None)
    return InterruptedRun(f"interrupted; {'the run is in' if kept else 'nothing was changed in'} {run_dir}",
                          run_dir=run_dir, resumable=kept)


def check_seed(seed: int) -> None:
    """``run.seed`` also seeds NumPy, which accepts 0 .. 2**32 - 1 only.

    Raises:
        ConfigError: the seed is outside that range (checked before anything is written).
    """
    try:
        check_int_range(seed, "run.seed", 0, MAX_SEED)  # the one validator of integer ranges
    except AtzooError as exc:
        raise ConfigError(str(exc)) from None


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


class Trainer:
    """Owns everything one run needs; :func:`train` is its only intended caller.

    Building and the loop are here; the rest is done by components, each made here with
    its collaborators passed explicitly (none reads an attribute another class sets):

    * ``log`` (:class:`~atzoo.engine.logs.RunLog`): events, metrics rows, trackers, meters;
    * ``checkpoints`` (:class:`~atzoo.engine.resume.CheckpointKeeper`): opening the run
      directory, checkpoints and resume;
    * ``finisher`` (:class:`~atzoo.engine.finish.Finisher`): the final checkpoint, the
      exported models, evaluation, ``curves.png``.

    ``position`` (:class:`~atzoo.engine.logs.Position`) is the one set of counters they share.
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
        co_check = co_enabled(cfg, method.single_step)  # catastrophic overfitting (atzoo/engine/overfit.py)
        # With the check on, the validation also measures FGSM accuracy (the check's second number).
        self.validator = (Validator(cfg, val_bundle, accelerator, with_fgsm=co_check)
                          if val_bundle is not None else None)
        self.co_watch = self._overfit_watch() if co_check else None
        self.stopped: str | None = None  # why training ended early (eval.on_co)
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
        self.average = WeightAverage(self.core.model, cfg.averaging,
                                     total_steps=cfg.optim.epochs * self.steps_per_epoch)
        self.position = Position()
        self.cost = CostMeter(hardware_profile(accelerator.device, accelerator.num_processes,
                                                   precision.profile(cfg.run.precision, cfg.attack.precision)))
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=self.is_main)
        self.reporter = Reporter(enabled=self.is_main, total_steps=self.total_steps(), epochs=cfg.optim.epochs)
        self.stop = GracefulStop()  # train() installs it; fit() arms it
        self.log = RunLog(cfg, accelerator, metrics=self.metrics, reporter=self.reporter, position=self.position,
                          cost=self.cost, average=self.average, core=self.core, method=method, loader=self.loader)
        self.checkpoints = CheckpointKeeper(
            cfg, run_dir, accelerator, core=self.core, optimizer=self.optimizer, scheduler=self.scheduler,
            method=method, average=self.average, position=self.position, log=self.log, cost=self.cost,
            metrics=self.metrics, validator=self.validator, co_watch=self.co_watch, bundle=self.bundle,
            steps_per_epoch=self.steps_per_epoch)
        self.finisher = Finisher(
            cfg, run_dir, accelerator, bundle=self.bundle, core=self.core, method=method, average=self.average,
            validator=self.validator, co_watch=self.co_watch, checkpoints=self.checkpoints, log=self.log,
            metrics=self.metrics, position=self.position, reporter=self.reporter,
            attack_precision=self.runner.attack_precision,
            new_loader=lambda: self._train_loader(augment=cfg.data.augment))

    # ------------------------------------------------------------------ the run, as train() drives it
    def open_run_dir(self, *, force: bool, resume: bool, trackers: list[str],
                     claim: RunDirClaim | None = None) -> None:
        """Fresh, replaced or resumed run directory (:meth:`CheckpointKeeper.open_run_dir`)."""
        self.checkpoints.open_run_dir(force=force, resume=resume, trackers=trackers, claim=claim)

    def log_config_notes(self, notes: list[str]) -> None:
        """Prints and logs (``event: config`` rows) the lines that say how the config was made."""
        self.log.log_config_notes(notes)

    def finish(self) -> None:
        """Final checkpoint, export, evaluation (:meth:`Finisher.finish`)."""
        self.finisher.finish(stopped=self.stopped)

    # ------------------------------------------------------------------ building
    def _load_data(self) -> Any:
        from atzoo.data import create_dataset

        d = self.cfg.data
        bundle = create_dataset(d.name, root=d.root, download=d.download, train_subset=d.train_subset,
                                test_subset=d.test_subset)
        # eval.val_every: a held-out part of the training set (never the test set) for validation.
        bundle, val_bundle = carve_validation(bundle, val_size(self.cfg, len(bundle.train)))
        if d.extra is not None:
            from atzoo.data.extra import attach_extra

            bundle = attach_extra(bundle, d.extra)
        return bundle, val_bundle

    def _overfit_watch(self) -> OverfitWatch:
        """The catastrophic-overfitting check (eval.co_check): on the validation rows, else a training probe."""
        return OverfitWatch(self.cfg, self.bundle, self.acc, use_validation=self.validator is not None)

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
            drop_last=True, num_workers=self.cfg.data.num_workers, extra_fraction=self.cfg.data.extra_fraction,
        )

    def _steps_per_epoch(self) -> int:
        # Free-AT's minibatch replay: every loader batch is m engine steps (atzoo.engine.replay).
        steps = len(self.loader) * self.method.replays // self.cfg.optim.grad_accum
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
        """Loader batches used per epoch, each counted ``method.replays`` times: whole optimizer steps only."""
        return self.steps_per_epoch * self.cfg.optim.grad_accum

    def fit(self) -> None:
        """Runs epochs until ``optim.epochs`` or ``run.max_steps``."""
        self.log.start_clock(time.perf_counter())  # throughput counts training only, not the set-up
        with self.reporter:
            with self.stop.armed_for_steps():  # SIGTERM now waits for the step boundary
                while not self.done():
                    self.run_epoch(self.position.epoch)
                self.stop_if_requested()  # received during the last step: stop before the export

    def done(self) -> bool:
        return self.position.epoch >= self.cfg.optim.epochs or self.max_steps_reached() or self.stopped is not None

    def max_steps_reached(self) -> bool:
        return self.cfg.run.max_steps is not None and self.position.global_step >= self.cfg.run.max_steps

    def run_epoch(self, epoch: int) -> None:
        """One epoch (or its rest, after a mid-epoch resume)."""
        if self.position.batch == 0:
            self.start_epoch(epoch)
        self.loader.set_epoch(epoch)
        self.acc.step = 0  # accumulation phase; epochs hold whole optimizer steps
        remaining = self.batches_per_epoch - self.position.batch
        batches = replayed_batches(self.loader, self.position.batch, self.method.replays)
        for x, y in itertools.islice(batches, remaining):
            with self.cost.step():  # CPU and wall time of the step itself (atzoo.engine.cost)
                self.train_batch(x, y)
            if self.acc.sync_gradients and self.after_optimizer_step():
                return  # run.max_steps reached mid-epoch (a checkpoint was written)
        self.end_epoch(epoch)

    def start_epoch(self, epoch: int) -> None:
        """``method.on_epoch_start`` (e.g. AR-AT's auto-balance) and a fresh epoch meter."""
        self.log.new_epoch()
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
    def train_batch(self, x: Tensor, y: Tensor) -> None:
        """The one training step (:func:`atzoo.engine.step.train_step`) and its bookkeeping."""
        reduced: list[StepValues] = []

        def check(out: StepOutput) -> None:  # before the backward: a NaN never reaches the weights
            reduced.append(self.reduce_step(out.parts, out.loss, out.logits, out.y))
            self.check_finite(reduced[0])

        out = train_step(self.runner, x, y, epoch=self.position.epoch, global_step=self.position.global_step,
                         check=check)
        values = reduced[0]
        self.position.batch_done()
        self.log.add_batch(values, (out.x, out.x_adv, out.y, out.stats))

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
            f"({parts}); stopped, last good checkpoint: {self.checkpoints.last_checkpoint()} "
            "(try a lower optim.lr, optim.grad_clip, or run.precision=no)"
        )

    def after_optimizer_step(self) -> bool:
        """Scheduler, averaging, logging and step checkpoints; True when max_steps is reached."""
        self.checkpoints.confirm_started()  # a --force-replaced old run is deleted only now
        lr = self.optimizer.param_groups[0]["lr"]  # the lr this step used
        if not self.acc.optimizer_step_was_skipped:  # fp16 overflow: the step did not happen
            self.scheduler.step()
        sync_buffers(self.core, self.acc.num_processes)
        p = self.position
        p.step_done()
        self.average.maybe_update(self.core.model, p.epoch, p.global_step)
        self.log.after_step(lr)  # progress bar, step row and diagnostics when due
        crash_point("step", p.global_step)  # inert unless ATZOO_TEST_CRASH_AT is set (crash tests)
        end_of_epoch = p.batch >= self.batches_per_epoch
        if self.max_steps_reached() and not end_of_epoch:
            self.log.log_epoch(p.epoch, partial=True)
            self.checkpoints.save()
            return True
        if self._step_checkpoint_due() and not end_of_epoch:
            self.checkpoints.save()  # at the end of an epoch, end_epoch() writes it after the summary
        if not end_of_epoch:
            self.stop_if_requested()  # at the end of an epoch: after its summary, in end_epoch()
        return False

    def stop_if_requested(self) -> None:
        """SIGTERM received (on any process): checkpoint this step boundary and stop."""
        reduce_sum = None
        if self.acc.num_processes > 1:
            def reduce_sum(value: float) -> float:
                return float(self.acc.reduce(torch.tensor([value], device=self.acc.device), "sum").item())
        signum = self.stop.requested(reduce_sum)
        if signum is None:
            return
        self.checkpoints.save_unless_saved()
        raise StopSignal(signum, checkpointed=True)

    def _step_checkpoint_due(self) -> bool:
        every = self.cfg.run.checkpoint_every_steps
        return every > 0 and self.position.global_step % every == 0

    # ------------------------------------------------------------------ epoch end
    def end_epoch(self, epoch: int) -> None:
        """Epoch summary, validation (if due), then the epoch checkpoint (if due)."""
        self.log.log_epoch(epoch)
        self.validate(epoch)
        self.position.epoch_done()
        every = self.cfg.run.checkpoint_every
        if (every > 0 and self.position.epoch % every == 0) or self._step_checkpoint_due():
            self.checkpoints.save()
        self.stop_if_requested()

    def validate(self, epoch: int) -> None:
        """``eval.val_every``: held-out clean/PGD accuracy to metrics.jsonl, the trackers and
        the console; the most robust weights to ``model_best.safetensors``."""
        row = None
        if self.validator is not None and self.validator.due(epoch):
            row = {**self.validator.run(self.method.export(self.core.model), epoch), "step": self.position.global_step}
            self.metrics.write(row)
            self.log.track("val", row)
            if row["best"] and self.is_main:
                self.finisher.export(self.method.export(self.core.model), "model_best.safetensors", "best")
        co = self.check_overfitting(epoch, row)
        self.reporter.message(epoch_line(epoch, self.cfg.optim.epochs, self.log.epoch_summary(), self.log.last_lr,
                                         row, self.reporter.eta(self.position.global_step),
                                         co=co_text(co, with_accuracies=row is None)))
        self.act_on_overfitting(co)

    def check_overfitting(self, epoch: int, val_row: dict[str, Any] | None) -> dict[str, Any] | None:
        """The catastrophic-overfitting check of this epoch (atzoo/engine/overfit.py): a ``co`` row."""
        if self.co_watch is None:
            return None
        co = self.co_watch.check(self.core.model, self.method.export(self.core.model), epoch, val_row)
        if co is not None:
            co["step"] = self.position.global_step
            self.metrics.write(co)
            self.log.track("co", co)
        return co

    def act_on_overfitting(self, co: dict[str, Any] | None) -> None:
        """``eval.on_co``: stop after a flagged epoch, or stop and restore the most robust weights."""
        action = self.co_watch.action(co) if self.co_watch is not None else None
        if action is None:
            return
        self.stopped = f"catastrophic overfitting at epoch {co['epoch'] + 1}"  # type: ignore[index]
        text = f"eval.on_co={action}: training stops after epoch {co['epoch'] + 1}"  # type: ignore[index]
        if action == "rollback":
            kept = self.co_watch.roll_back(self.core.model)  # type: ignore[union-attr]
            text += (f"; weights of epoch {kept + 1} restored (the most robust check)" if kept is not None
                     else "; no earlier check to restore, the last weights are kept")
        self.log.event("catastrophic_overfitting", text, action=action)


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
