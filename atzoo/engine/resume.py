"""Run state: where training is, the run directory at start, checkpoints and resume.

:class:`RunState` is the part of :class:`~atzoo.engine.trainer.Trainer` that opens the
run directory (fresh, ``--force`` or ``--resume`` from the newest good checkpoint) and
writes and restores checkpoints -- everything a resumed run needs to continue bit for bit:
weights, optimizer, scheduler, scaler, method state, weight average, every process's RNG,
the counters and the running meters. It uses the trainer's attributes (``cfg``, ``run_dir``,
``acc``, ``core``, ``optimizer``, ``scheduler``, ``average``, ``method``, ``metrics``, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object, set_seed
from torch import Tensor, nn

from atzoo import __version__, precision
from atzoo.files.common import atomic_write_text
from atzoo.config import RunConfig, config_to_dict, read_config_file, to_yaml
from atzoo.engine.checkpoint import (
    CheckpointData,
    ResumePoint,
    all_finite,
    find_resume_checkpoint,
    join_tensors,
    list_checkpoints,
    plain_state_dict,
    remove_stale_temporaries,
    save_checkpoint,
    split_tensors,
)
from atzoo.engine.logs import Logging, Meter, tracker_config
from atzoo.engine.rng import capture_rng, restore_rng
from atzoo.engine.rundir import RunDirClaim
from atzoo.errors import CheckpointError, ConfigError, NonFiniteLossError


#: Config keys that may change between a run and its ``--resume`` (they do not affect
#: the weights); every other key of these sections must match config.yaml.
_RESUME_CHECKED_SECTIONS = ("data", "model", "attack", "optim", "method", "averaging")
_RESUME_FREE_KEYS = {"data.root", "data.download", "data.num_workers", "data.eval_batch_size", "data.test_subset"}


def config_differences(old: RunConfig, new: RunConfig) -> list[str]:
    """``section.key`` entries that differ between two configs and matter for training."""
    a, b = config_to_dict(old), config_to_dict(new)
    keys = [f"{s}.{k}" for s in _RESUME_CHECKED_SECTIONS for k in sorted(set(a[s]) | set(b[s]))]
    keys += ["run.seed", "eval.val_every", "eval.val_attack"]  # the held-out split and best weights follow them
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


def check_resume_config(run_dir: Path, cfg: RunConfig) -> str | None:
    """``--resume`` continues only the configuration in the run's config.yaml (checked
    before anything is built or written, through the bounded YAML reader), except for a
    longer ``optim.epochs`` (see :func:`resume_refusals`).

    Returns:
        The line announcing an extension (``extending the run from 100 to 120 epochs``), or None.

    Raises:
        ConfigError: config.yaml is unreadable, or a setting that affects training differs
            (each named with both values).
    """
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return None
    previous = read_config_file(saved)
    refusals = resume_refusals(previous, cfg)
    if refusals:
        raise ConfigError(
            f"--resume continues {saved} unchanged, but {'; '.join(refusals)} "
            "(drop those settings, or use --force or another --out for a new run)"
        )
    if cfg.optim.epochs != previous.optim.epochs:
        return f"extending the run from {previous.optim.epochs} to {cfg.optim.epochs} epochs"
    return None


@dataclass
class Position:
    """Where training is: epoch in progress, its batches consumed, optimizer steps done."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0


class RunState(Logging):
    """Opening the run directory, checkpoints and resume (a part of the trainer)."""

    def precision_summary(self) -> str:
        """``train bf16, attack bf16, eval fp32``: the precision of each phase of this run."""
        c = self.cfg
        return precision.describe(c.run.precision, c.attack.precision, c.eval.precision)

    def open_run_dir(self, *, force: bool, resume: bool, trackers: list[str]) -> None:
        """Fresh, replaced (``force``) or resumed directory; then trackers are started.

        Everything that can fail on bad input (the config check, reading and loading the
        checkpoint) happens before the first write.
        """
        point = find_resume_checkpoint(self.run_dir / "checkpoints") if resume else None
        if point is not None:
            self.restore(point)  # includes every process's RNG state
        if self.claim is None:  # a Trainer used without train(): the lock lasts until the process ends
            self.claim = RunDirClaim(self.run_dir, force=force, resume=resume, enabled=self.is_main)
        if self.is_main:
            self.claim.acquire()  # created, checked again and locked (atzoo.engine.rundir.RunDirClaim)
            if resume:
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
                                 f"({self.acc.device}), {self.steps_per_epoch} steps per epoch, precision "
                                 f"{self.precision_summary()} -> {self.run_dir}")
            # Independent attack noise per process from here on (rank 0 keeps run.seed).
            set_seed(self.cfg.run.seed, device_specific=True)
        missing = sorted(set(self.cfg.run.trackers) - set(trackers))
        if missing:
            self._event("trackers", f"tracker(s) {', '.join(missing)} not installed; logging to metrics.jsonl")
        if trackers:
            self.acc.init_trackers("tensorboard", config=tracker_config(self.cfg))

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
            "cost": self.cost.state_dict(),
            "metrics_bytes": self.metrics.size(),
            "validation": self.validator.state_dict() if self.validator is not None else None,
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
            self.cost.load_state_dict(state.get("cost"))
            self.resume_metrics_bytes = int(state["metrics_bytes"])
            if self.validator is not None:
                self.validator.load_state_dict(state.get("validation"))
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
