"""``train()``: the one Accelerate training loop every method runs through.

Reading order: :func:`train` builds a :class:`Trainer`, which

1. builds data, model and method (``method.prepare_model``, ``method.build_modules``),
   wraps them in a :class:`~atzoo.engine.module.TrainingModule` and calls
   ``accelerator.prepare`` once on it and the SGD optimizer;
2. opens the run directory (fresh, ``--force`` or ``--resume`` from the newest good
   checkpoint, restoring weights, optimizer, scheduler, method state, averages, RNG);
3. loops over epochs: ``method.on_epoch_start``, then per batch the attack on the
   unwrapped model, one forward of the prepared module (all of the method's passes),
   the sum of the loss parts, ``accelerator.backward``, clipping, the optimizer and
   scheduler steps, SWA/EMA, logging and checkpoints;
4. finishes: a final checkpoint, BN recalibration of the SWA average, the exported
   model (``model.safetensors`` + ``model_meta.json``) and ``eval.json``.

Batches: ``data.batch_size`` is the global batch of one forward pass, split evenly over
the processes; with ``optim.grad_accum = k`` each optimizer step sees ``k`` of them.
Counters: ``epoch`` (0-based), ``batch`` (loader batches of that epoch consumed) and
``global_step`` (optimizer steps). Checkpoints are taken only between optimizer steps.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, gather_object, set_seed
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from atzoo import __version__
from atzoo.config import RunConfig, config_to_dict, from_yaml, to_yaml
from atzoo.engine.averaging import WeightAverage, averaging_kind, recompute_bn_stats
from atzoo.engine.checkpoint import (
    CheckpointData,
    ResumePoint,
    all_finite,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    crash_point,
    remove_stale_temporaries,
    find_resume_checkpoint,
    join_tensors,
    plain_state_dict,
    save_checkpoint,
    split_tensors,
)
from atzoo.engine.module import TrainingModule
from atzoo.engine.progress import Reporter
from atzoo.engine.rng import capture_rng, restore_rng
from atzoo.engine.rundir import MetricsLog, check_run_dir, prepare_run_dir, resolve_run_dir
from atzoo.engine.schedules import build_scheduler
from atzoo.errors import AtzooError, CheckpointError, ConfigError, DataError
from atzoo.methods.base import EpochContext, Method, create_method

#: Largest ``run.seed``: NumPy's generator, which ``set_seed`` seeds too, takes 32 bits.
MAX_SEED = 2**32 - 1

#: Training samples (unaugmented) that ``EpochContext.calibration_batches`` yields.
CALIBRATION_SAMPLES = 1000

#: Config keys that may change between a run and its ``--resume`` (they do not affect
#: the weights); every other key of these sections must match config.yaml.
_RESUME_CHECKED_SECTIONS = ("data", "model", "attack", "optim", "method", "averaging")
_RESUME_FREE_KEYS = {"data.root", "data.download", "data.num_workers", "data.eval_batch_size", "data.test_subset"}


class NonFiniteLossError(AtzooError):
    """The training loss (or the weights) became NaN or infinite; the run stopped."""


# --------------------------------------------------------------------------- entry point


def train(cfg: RunConfig, *, out: str | Path | None = None, force: bool = False, resume: bool = False) -> Path:
    """Trains ``cfg`` and returns the run directory.

    Args:
        cfg: a resolved, validated config (:func:`atzoo.config.build_config`).
        out: the run directory (default ``run.out``, else ``runs/<name>``).
        force: replace an existing run directory.
        resume: continue the run in the directory from its newest good checkpoint
            (start from scratch when it has none).

    Raises:
        AtzooError: the directory exists without ``force``/``resume``, the config does
            not fit the data or the checkpoint, or the loss became non-finite. Nothing
            on disk is changed by an error raised before training starts.
    """
    run_dir = resolve_run_dir(cfg, out)
    averaging_kind(cfg.averaging)  # config conflicts first, before anything else
    check_seed(cfg.run.seed)
    check_run_dir(run_dir, force=force, resume=resume)
    # Record where this run lives, so methods that place side runs next to it (ARREST's
    # pretraining into "<run dir>-pretrain") see the directory given by --out too.
    cfg.run.out = str(run_dir)
    method = create_method(cfg.method.name, cfg)
    trackers = select_trackers(cfg.run.trackers)
    accelerator = make_accelerator(cfg, run_dir, trackers, method)
    trainer = Trainer(cfg, run_dir, accelerator, method)
    trainer.open_run_dir(force=force, resume=resume, trackers=trackers)
    trainer.fit()
    trainer.finish()
    return run_dir


def check_seed(seed: int) -> None:
    """``run.seed`` also seeds NumPy, which accepts 0 .. 2**32 - 1 only.

    Raises:
        ConfigError: the seed is outside that range (checked before anything is written).
    """
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"run.seed must be in [0, {MAX_SEED}], got {seed}")


def make_accelerator(cfg: RunConfig, run_dir: Path, trackers: list[str], method: Method) -> Accelerator:
    """The run's Accelerator: precision, accumulation, trackers, DDP options.

    The device (CPU when no accelerator is present) and the distributed setting
    (``torchrun``/``accelerate launch``) come from the environment, as Accelerate detects them.
    """
    # Accelerate keeps one process-wide state and refuses a second Accelerator with another
    # precision; a new run in the same process (tests, notebooks) starts from a clean one.
    # The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    ddp = DistributedDataParallelKwargs(find_unused_parameters=bool(getattr(method, "find_unused_parameters", False)))
    try:
        return Accelerator(
            mixed_precision=cfg.run.precision,
            gradient_accumulation_steps=cfg.optim.grad_accum,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir)),
            kwargs_handlers=[ddp],
            step_scheduler_with_optimizer=False,
            # Accelerate treats a torchrun launch as multi-CPU (gloo) only when told cpu=True.
            cpu=not accelerator_available(),
        )
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"run.precision={cfg.run.precision} cannot be used here: {first}") from None


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


def sum_parts(parts: dict[str, Tensor]) -> Tensor:
    """The training loss: the float32 sum of the method's loss parts."""
    return torch.stack([p.float() for p in parts.values()]).sum()


def config_differences(old: RunConfig, new: RunConfig) -> list[str]:
    """``section.key`` entries that differ between two configs and matter for training."""
    a, b = config_to_dict(old), config_to_dict(new)
    keys = [f"{s}.{k}" for s in _RESUME_CHECKED_SECTIONS for k in sorted(set(a[s]) | set(b[s]))] + ["run.seed"]
    return [k for k in keys if k not in _RESUME_FREE_KEYS and _lookup(a, k) != _lookup(b, k)]


def resume_refusals(saved: RunConfig, new: RunConfig) -> list[str]:
    """``key: saved -> new`` for each difference that ``--resume`` cannot continue across.

    A longer ``optim.epochs`` is allowed where the schedule is a function of the epoch
    alone (``piecewise``, ``constant``): the run continues at the last learning rate.
    A cosine or one-cycle schedule spans the whole run, so changing its length would
    change the learning rate of the steps already taken.
    """
    a, b = config_to_dict(saved), config_to_dict(new)
    refusals = []
    for key in config_differences(saved, new):
        if key == "optim.epochs" and b["optim"]["epochs"] > a["optim"]["epochs"] \
                and new.optim.schedule in ("piecewise", "constant"):
            continue
        refusals.append(f"{key}: {_lookup(a, key)!r} -> {_lookup(b, key)!r}")
    return refusals


def _lookup(values: dict[str, Any], key: str) -> Any:
    section, _, leaf = key.partition(".")
    return values[section].get(leaf)


# --------------------------------------------------------------------------- counters


@dataclass
class Position:
    """Where training is: epoch in progress, its batches consumed, optimizer steps done."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0


@dataclass
class Meter:
    """Running sums over a window of batches (one logging interval, or one epoch)."""

    parts: dict[str, float] = field(default_factory=dict)
    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    batches: int = 0
    seconds_before: float = 0.0  # time spent before a resume (epoch meter)
    started: float = field(default_factory=time.perf_counter)

    def add(self, parts: dict[str, float], loss: float, correct: float, count: float) -> None:
        for name, value in parts.items():
            self.parts[name] = self.parts.get(name, 0.0) + value
        self.loss += loss
        self.correct += correct
        self.count += count
        self.batches += 1

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def summary(self) -> dict[str, Any]:
        n = max(self.batches, 1)
        seconds = self.seconds()
        return {
            "loss": self.loss / n,
            "parts": {k: v / n for k, v in self.parts.items()},
            "train_acc": self.correct / self.count if self.count else float("nan"),
            "images": int(self.count),
            "seconds": seconds,
            "images_per_s": self.count / seconds if seconds > 0 else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"parts": dict(self.parts), "loss": self.loss, "correct": self.correct, "count": self.count,
                "batches": self.batches, "seconds": self.seconds()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Meter":
        return cls(parts=dict(state["parts"]), loss=state["loss"], correct=state["correct"], count=state["count"],
                   batches=state["batches"], seconds_before=state["seconds"])


@dataclass
class StepValues:
    """One batch's loss parts, loss and accuracy, averaged over all processes."""

    parts: dict[str, float]
    loss: float
    correct: float
    count: float


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """Owns everything one run needs; :func:`train` is its only intended caller."""

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
        self.bundle = self._load_data()
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
        self.trainable = [p for p in self.core.parameters() if p.requires_grad]
        self.average = WeightAverage(self.core.model, cfg.averaging)
        self.position = Position()
        self.saved_step: int | None = None
        self.window, self.epoch_meter = Meter(), Meter()
        self.last_lr = cfg.optim.lr
        self.resume_metrics_bytes = 0
        self.last_batch: tuple[Tensor, Tensor | None, Tensor, dict[str, float]] | None = None
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=self.is_main)
        self.reporter = Reporter(enabled=self.is_main, total_steps=self.total_steps())

    # ------------------------------------------------------------------ building
    def _load_data(self) -> Any:
        from atzoo.data import create_dataset

        d = self.cfg.data
        return create_dataset(d.name, root=d.root, download=d.download, train_subset=d.train_subset,
                              test_subset=d.test_subset)

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

    # ------------------------------------------------------------------ run directory
    def open_run_dir(self, *, force: bool, resume: bool, trackers: list[str]) -> None:
        """Fresh, replaced (``force``) or resumed directory; then trackers are started.

        Everything that can fail on bad input (the config check, reading and loading the
        checkpoint) happens before the first write.
        """
        point = find_resume_checkpoint(self.run_dir / "checkpoints") if resume else None
        self._check_resume_config(resume)
        if point is not None:
            self.restore(point)  # includes every process's RNG state
        if self.is_main:
            if not resume:
                prepare_run_dir(self.run_dir, force=force)
            else:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(self.run_dir)  # e.g. an export cut short by a kill
            atomic_write_text(self.run_dir / "config.yaml", to_yaml(self.cfg))
        self.acc.wait_for_everyone()
        if point is not None:
            self._announce_resume(point)
        else:
            if resume:
                self.metrics.truncate(0)
                self._event("resume", f"no checkpoint in {self.run_dir / 'checkpoints'}; starting from the beginning")
            self._event("start", f"training {self.cfg.method.name} on {self.acc.num_processes} process(es) "
                                 f"({self.acc.device}), {self.steps_per_epoch} steps per epoch -> {self.run_dir}")
            # Independent attack noise per process from here on (rank 0 keeps run.seed).
            set_seed(self.cfg.run.seed, device_specific=True)
        missing = sorted(set(self.cfg.run.trackers) - set(trackers))
        if missing:
            self._event("trackers", f"tracker(s) {', '.join(missing)} not installed; logging to metrics.jsonl")
        if trackers:
            self.acc.init_trackers("tensorboard", config=tracker_config(self.cfg))

    def _check_resume_config(self, resume: bool) -> None:
        saved = self.run_dir / "config.yaml"
        if not resume or not saved.is_file():
            return
        try:
            text = saved.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{saved} is not a UTF-8 text file, so not an atzoo config") from None
        previous = from_yaml(text, str(saved))
        refusals = resume_refusals(previous, self.cfg)
        if refusals:
            raise ConfigError(
                f"--resume continues {saved} unchanged, but {'; '.join(refusals)} "
                "(drop those settings, or use --force or another --out for a new run)"
            )
        if self.cfg.optim.epochs != previous.optim.epochs:
            self.reporter.message(f"extending the run from {previous.optim.epochs} to {self.cfg.optim.epochs} epochs")

    def _event(self, event: str, text: str, **extra: Any) -> None:
        self.reporter.message(text)
        self.metrics.write({"kind": "event", "event": event, "step": self.position.global_step,
                            "message": text, **extra})

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_data(self, rng_states: list[dict[str, Any]]) -> CheckpointData:
        """Everything a resumed run needs to continue bit for bit."""
        method_tensors: dict[str, Tensor] = {}
        rng_tensors: dict[str, Tensor] = {}
        method_state = split_tensors(self.method.state_dict(), "method", method_tensors)
        rng_json = [split_tensors(s, f"rank{r}", rng_tensors) for r, s in enumerate(rng_states)]
        tensors = {"training": plain_state_dict(self.core), "method": method_tensors, "rng": rng_tensors}
        if self.average.enabled:
            tensors["average"] = {k: v.detach().cpu().contiguous().clone() for k, v in self.average.state_dict().items()}
        scaler = self.acc.scaler.state_dict() if self.acc.scaler is not None else None
        state = {
            "position": dataclasses.asdict(self.position),
            "steps_per_epoch": self.steps_per_epoch,
            "num_processes": self.acc.num_processes,
            "method": method_state,
            "rng": rng_json,
            "window": self.window.state_dict(),
            "epoch_meter": self.epoch_meter.state_dict(),
            "metrics_bytes": self.metrics.size(),
            "atzoo_version": __version__,
        }
        pickled = {"optimizer": {"optimizer": self.optimizer.state_dict(),
                                 "scheduler": self.scheduler.state_dict(), "scaler": scaler}}
        return CheckpointData(tensors=tensors, pickled=pickled, state=state)

    def save(self) -> None:
        """Writes a checkpoint of the current position (collective: gathers RNG states)."""
        bad = all_finite(dict(self.core.state_dict()))
        if bad is not None:
            raise NonFiniteLossError(
                f"weight '{bad}' became non-finite by step {self.position.global_step}; stopped without "
                f"checkpointing (last good checkpoint: {self._last_checkpoint()})"
            )
        rng_states = gather_object([capture_rng()])
        if self.is_main:
            self.metrics.sync()  # the log up to the size this checkpoint records is on disk first
            save_checkpoint(self.run_dir / "checkpoints", self.position.global_step,
                            self.checkpoint_data(rng_states), keep=self.cfg.run.keep_checkpoints)
        self.saved_step = self.position.global_step
        self.acc.wait_for_everyone()

    def _last_checkpoint(self) -> str:
        from atzoo.engine.checkpoint import list_checkpoints

        found = list_checkpoints(self.run_dir / "checkpoints")
        return str(found[-1]) if found else "none"

    def restore(self, point: ResumePoint) -> None:
        """Loads a verified checkpoint into every part of the trainer (writes nothing)."""
        data, state = point.data, point.data.state
        self._load_module(self.core, data.tensors.get("training", {}), point.path / "training.safetensors")
        self._load_optimizer(data.pickled.get("optimizer"), point.path / "optimizer.pt")
        try:
            if state["steps_per_epoch"] != self.steps_per_epoch:
                raise ValueError(f"{state['steps_per_epoch']} steps per epoch there, {self.steps_per_epoch} now")
            if self.average.enabled:
                self.average.load_state_dict(data.tensors["average"])
            self.method.load_state_dict(join_tensors(state["method"], data.tensors.get("method", {})))
            rank = self.acc.process_index if self.acc.process_index < len(state["rng"]) else 0
            restore_rng(join_tensors(state["rng"][rank], data.tensors.get("rng", {})))
            self.position = Position(**state["position"])
            self.window = Meter.from_state(state["window"])
            self.epoch_meter = Meter.from_state(state["epoch_meter"])
            self.resume_metrics_bytes = int(state["metrics_bytes"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {point.path} does not fit this run ({type(exc).__name__}: {exc})") from None
        self.saved_step = self.position.global_step

    def _announce_resume(self, point: ResumePoint) -> None:
        """Cuts metrics.jsonl back to the checkpoint and says where the run continues."""
        self.metrics.truncate(self.resume_metrics_bytes)
        for problem in point.skipped:
            self._event("checkpoint_skipped", f"skipping bad checkpoint: {problem}")
        self._event("resume", f"resuming from {point.path} (epoch {self.position.epoch}, "
                              f"step {self.position.global_step})", checkpoint=str(point.path))

    @staticmethod
    def _load_module(module: nn.Module, tensors: dict[str, Tensor], file: Path) -> None:
        try:
            module.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"checkpoint file {file} does not match the model: {detail}") from None

    def _load_optimizer(self, state: dict[str, Any] | None, file: Path) -> None:
        if not isinstance(state, dict) or "optimizer" not in state or "scheduler" not in state:
            raise CheckpointError(f"checkpoint file {file} lacks the optimizer or scheduler state")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.acc.scaler is not None and state.get("scaler"):
                self.acc.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint file {file} does not match the optimizer: {exc}") from None

    # ------------------------------------------------------------------ the loop
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
            self.train_batch(x, y)
            if self.acc.sync_gradients and self.after_optimizer_step():
                return  # run.max_steps reached mid-epoch (a checkpoint was written)
        self.end_epoch(epoch)

    def start_epoch(self, epoch: int) -> None:
        """``method.on_epoch_start`` (e.g. AR-AT's auto-balance) and a fresh epoch meter."""
        self.epoch_meter = Meter()
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
        """Attack, one forward of the prepared module, backward, and (if due) the update."""
        if self.cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.acc.accumulate(self.wrapped):
            with self.acc.autocast():
                # The attack runs on the unwrapped network: input gradients only, no DDP hooks.
                x_adv = self.method.attack(self.core.model, self.core.method_modules, x, y)
                parts, logits, stats = self.wrapped(x, x_adv, y)
            loss = sum_parts(parts)
            values = self.reduce_step(parts, loss, logits, y)
            self.check_finite(values)
            self.acc.backward(loss)
            if self.acc.sync_gradients and self.cfg.optim.grad_clip is not None:
                self.acc.clip_grad_norm_(self.trainable, self.cfg.optim.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.position.batch += 1
        self.window.add(values.parts, values.loss, values.correct, values.count)
        self.epoch_meter.add(values.parts, values.loss, values.correct, values.count)
        self.last_batch = (x, x_adv, y, stats)

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

    def _bar_fields(self) -> dict[str, float]:
        summary = self.window.summary()
        return {"loss": summary["loss"], "acc": summary["train_acc"], "ips": summary["images_per_s"]}

    # ------------------------------------------------------------------ logging
    def log_window(self, lr: float) -> None:
        """One ``step`` row of metrics.jsonl (and the trackers) for the last window."""
        summary = self.window.summary()
        row = {"kind": "step", "epoch": self.position.epoch, "step": self.position.global_step,
               "loss": summary["loss"], "parts": summary["parts"], "train_acc": summary["train_acc"], "lr": lr,
               "images_per_s": summary["images_per_s"], "stats": self.last_batch[3] if self.last_batch else {}}
        self.metrics.write(row)
        self.track("train", row)
        self.window = Meter()

    def log_epoch(self, epoch: int, *, partial: bool = False) -> None:
        """The ``epoch`` row: means over the epoch, seconds, images/s, BN diagnostics."""
        summary = self.epoch_meter.summary()
        row = {"kind": "epoch", "epoch": epoch, "step": self.position.global_step, "partial": partial,
               "loss": summary["loss"], "parts": summary["parts"], "train_acc": summary["train_acc"],
               "lr": self.last_lr, "seconds": summary["seconds"],
               "images_per_s": summary["images_per_s"]}
        if self.average.enabled:
            row["n_averaged"] = self.average.n_averaged
        if self.cfg.diagnostics.every > 0 and self.is_main:
            from atzoo.eval.diagnostics import epoch_diagnostics

            row["diagnostics"] = epoch_diagnostics(self.core.model)
        self.metrics.write(row)
        self.track("epoch", row)

    def log_step_diagnostics(self) -> None:
        """Gradient similarity/conflict and feature drift of the AR-AT paper (main process)."""
        if not self.is_main:
            return
        from atzoo.eval.diagnostics import step_diagnostics

        assert self.last_batch is not None, "diagnostics run after a training batch"
        x, x_adv, y, _ = self.last_batch
        values = step_diagnostics(self.method, self.core.model, self.core.method_modules, x, x_adv, y)
        self.metrics.write({"kind": "diagnostics", "epoch": self.position.epoch,
                            "step": self.position.global_step, **values})
        self.track("diagnostics", values)

    def track(self, prefix: str, row: dict[str, Any]) -> None:
        """Sends the numeric entries of a row to the Accelerate trackers (main process)."""
        if self.acc.trackers:
            self.acc.log({f"{prefix}/{k}": v for k, v in flatten_numbers(row).items()},
                         step=self.position.global_step)

    # ------------------------------------------------------------------ epoch end
    def end_epoch(self, epoch: int) -> None:
        """Epoch summary, then the epoch checkpoint (if due) at the start of the next epoch."""
        self.log_epoch(epoch)
        self.position.epoch += 1
        self.position.batch = 0
        every = self.cfg.run.checkpoint_every
        if (every > 0 and self.position.epoch % every == 0) or self._step_checkpoint_due():
            self.save()

    # ------------------------------------------------------------------ the end
    def finish(self) -> None:
        """Final checkpoint, SWA BN recalibration, export, evaluation, final row."""
        if self.saved_step != self.position.global_step:
            self.save()
        deploy, weights = self.deployable_model()
        if self.is_main:
            self.export(deploy, "model.safetensors", weights)
            if weights != "last":
                self.export(self.method.export(self.core.model), "model_last.safetensors", "last")
        self.acc.wait_for_everyone()
        final = {"kind": "final", "step": self.position.global_step, "weights": weights,
                 "n_averaged": self.average.n_averaged}
        if self.cfg.run.evaluate:
            final["eval"] = self.evaluate(deploy, weights)
        self.metrics.write(final)
        for tracker in self.acc.trackers:
            tracker.finish()

    def deployable_model(self) -> tuple[nn.Module, str]:
        """The exported network and which weights it holds (``swa``, ``ema`` or ``last``)."""
        if not self.average.enabled or self.average.n_averaged == 0:
            if self.average.enabled:
                self._event("averaging", f"{self.average.kind} has no update yet; exporting the last iterate")
            return self.method.export(self.core.model).eval(), "last"
        averaged = self.average.module()
        if self.average.kind == "swa":
            batches = self.recalibrate_bn(averaged)
            self._event("swa_bn", f"recomputed the BN statistics of the SWA average on {batches} adversarial batches")
        return self.method.export(averaged).eval(), str(self.average.kind)

    def recalibrate_bn(self, model: nn.Module) -> int:
        """One pass over the training data with PGD-10 inputs (the training-attack settings,
        the ``adv`` route of routed-BN models) to rebuild the average's BN statistics."""
        from atzoo.attacks import pgd
        from atzoo.models import has_routed_bn

        a = self.cfg.attack
        route = "adv" if has_routed_bn(model) else None

        def adversarial(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return pgd(net, x, y, eps=a.eps, step_size=a.step_size, steps=10, norm=a.norm,
                       random_start=a.random_start or "uniform", start_std=a.start_std, mode="train", route=route)

        loader = self._train_loader(augment=self.cfg.data.augment)
        loader.set_epoch(self.cfg.optim.epochs)  # a fixed, reproducible pass
        with self.acc.autocast():
            return recompute_bn_stats(model, loader, adversarial, route=route,
                                      reduce_mean=lambda t: self.acc.reduce(t, "mean"))

    def export(self, model: nn.Module, filename: str, weights: str) -> None:
        """Writes a plain model's weights (safetensors) and, for the deployable one, its meta."""
        from atzoo.models.timm_models import portable_module  # timm runs export timm's own keys

        atomic_write_bytes(self.run_dir / filename, safetensors_save(plain_state_dict(portable_module(model))))
        if filename == "model.safetensors":
            atomic_write_json(self.run_dir / "model_meta.json", self.model_meta(weights))

    def model_meta(self, weights: str) -> dict[str, Any]:
        """What ``atzoo.eval.load_run_model`` needs to rebuild the exported network."""
        b = self.bundle
        return {
            "model": self.cfg.model.name, "num_classes": b.num_classes, "in_channels": b.in_channels,
            "image_size": b.image_size, "normalize": self.cfg.model.normalize,
            "mean": list(b.mean), "std": list(b.std), "method": self.cfg.method.name,
            "dataset": self.cfg.data.name, "weights": weights, "atzoo_version": __version__,
        }

    def evaluate(self, model: nn.Module, weights: str) -> dict[str, Any]:
        """``atzoo.eval.evaluate`` on the exported model; it writes eval.json (main process),
        to which the engine adds which weights were evaluated."""
        from atzoo.eval import evaluate

        show = self.is_main and self.reporter.console.is_terminal
        payload = evaluate(model, self.bundle, self.cfg.eval, attack_cfg=self.cfg.attack, accelerator=self.acc,
                           progress=show, out=self.run_dir, meta=self.model_meta(weights), seed=self.cfg.run.seed)
        payload["weights"] = weights
        if self.is_main:
            atomic_write_json(self.run_dir / "eval.json", payload)
        self.acc.wait_for_everyone()
        return {k: payload[k] for k in ("clean_acc", "pgd20_acc", "autoattack_acc") if payload.get(k) is not None}


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


def flatten_numbers(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested row as ``a/b`` keys (what trackers accept)."""
    flat: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_numbers(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def tracker_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as ``section.key`` scalars (TensorBoard's hparams take no lists)."""
    flat: dict[str, Any] = {}
    for section, values in config_to_dict(cfg).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
