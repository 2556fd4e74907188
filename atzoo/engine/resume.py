"""The run directory at start, checkpoints and resume.

:class:`CheckpointKeeper` is the component of :class:`~atzoo.engine.trainer.Trainer` that
opens the run directory (fresh, ``--force`` or ``--resume`` from the newest good
checkpoint) and writes and restores checkpoints -- everything a resumed run needs to
continue bit for bit: weights, optimizer, scheduler, scaler, method state, weight average,
every process's RNG, the counters and the running meters. Its collaborators are given to
its ``__init__``. The config checks of ``--resume`` (:func:`check_resume_config`) are
functions of this module too.
"""

from __future__ import annotations

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
from atzoo.engine.averaging import WeightAverage
from atzoo.engine.cost import CostMeter
from atzoo.engine.logs import Position, RunLog
from atzoo.engine.overfit import OverfitWatch
from atzoo.engine.rng import capture_rng, restore_rng
from atzoo.engine.rundir import MetricsLog, RunDirClaim
from atzoo.engine.validation import Validator
from atzoo.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError

__all__ = ["CheckpointKeeper", "Position", "check_resume_config", "config_differences", "resume_refusals"]


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


class CheckpointKeeper:
    """Opening the run directory, checkpoints and resume: the component of
    :class:`~atzoo.engine.trainer.Trainer` that writes checkpoints and restores them.

    A checkpoint holds everything a resumed run needs to continue bit for bit; each part
    is asked for its own state (``state_dict``) and given it back (``load_state_dict``).

    Args:
        cfg: the run's config.
        run_dir: the run directory.
        accelerator: the run's Accelerator (processes, scaler, barriers).
        core: the training module (model and method modules).
        optimizer, scheduler: the prepared optimizer and its learning-rate schedule.
        method: the method (its state: e.g. AR-AT's balance, AWP's proxy).
        average: the SWA/EMA average.
        position: the run's counters (loaded in place on resume).
        log: the run's :class:`~atzoo.engine.logs.RunLog` (events, meters, trackers).
        cost: the per-epoch cost meter.
        metrics: ``metrics.jsonl`` (its size is recorded; a resume cuts it back).
        validator: the held-out validation (its best epoch), or None.
        co_watch: the catastrophic-overfitting checks (their history), or None.
        bundle: the training data (its digest is recorded; a resume on other data is refused).
        steps_per_epoch: optimizer steps per epoch (a checkpoint of another split does not fit).
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, accelerator: Any, *, core: nn.Module, optimizer: Any,
                 scheduler: Any, method: Any, average: WeightAverage, position: Position, log: RunLog,
                 cost: CostMeter, metrics: MetricsLog, validator: Validator | None, co_watch: OverfitWatch | None,
                 bundle: Any, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.acc = accelerator
        self.is_main = accelerator.is_main_process
        self.core = core
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.method = method
        self.average = average
        self.position = position
        self.log = log
        self.cost = cost
        self.metrics = metrics
        self.validator = validator
        self.co_watch = co_watch
        self.bundle = bundle
        self.steps_per_epoch = steps_per_epoch
        self.saved_step: int | None = None  # the step of the newest checkpoint this process wrote or loaded
        self.resume_metrics_bytes = 0
        self.claim: RunDirClaim | None = None  # given to open_run_dir() by train(), else made there

    def precision_summary(self) -> str:
        """``train bf16, attack bf16, eval fp32``: the precision of each phase of this run."""
        c = self.cfg
        return precision.describe(c.run.precision, c.attack.precision, c.eval.precision)

    def open_run_dir(self, *, force: bool, resume: bool, trackers: list[str],
                     claim: RunDirClaim | None = None) -> None:
        """Fresh, replaced (``force``) or resumed directory; then trackers are started.

        Everything that can fail on bad input (the config check, reading and loading the
        checkpoint) happens before the first write. ``claim``: the directory claim of
        :func:`~atzoo.engine.trainer.train` (one is made here otherwise).
        """
        point = find_resume_checkpoint(self.run_dir / "checkpoints") if resume else None
        if point is not None:
            self.restore(point)  # includes every process's RNG state
        if claim is not None:
            self.claim = claim
        if self.claim is None:  # a Trainer used without train(): the lock lasts until the process ends
            self.claim = RunDirClaim(self.run_dir, force=force, resume=resume, enabled=self.is_main)
        if self.is_main:
            self.claim.acquire()  # created, checked again and locked (atzoo.engine.rundir.RunDirClaim)
            if resume:
                remove_stale_temporaries(self.run_dir)  # e.g. an export cut short by a kill
            atomic_write_text(self.run_dir / "config.yaml", to_yaml(self.cfg))
        self.acc.wait_for_everyone()
        if point is not None:
            self.announce_resume(point)
        else:
            if resume:
                self.metrics.truncate(0)
                self.log.event("resume",
                               f"no checkpoint in {self.run_dir / 'checkpoints'}; starting from the beginning")
            self.log.event("start", f"training {self.cfg.method.name} on {self.acc.num_processes} process(es) "
                                    f"({self.acc.device}), {self.steps_per_epoch} steps per epoch, precision "
                                    f"{self.precision_summary()} -> {self.run_dir}")
            # Independent attack noise per process from here on (rank 0 keeps run.seed).
            set_seed(self.cfg.run.seed, device_specific=True)
        self.log.start_trackers(trackers, run_dir=self.run_dir, fresh=point is None)

    def confirm_started(self) -> None:
        """The first optimizer step succeeded: a ``--force``-replaced old run is deleted only now."""
        if self.claim is not None:
            self.claim.started()

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
            "position": self.position.state_dict(),
            "steps_per_epoch": self.steps_per_epoch,
            "num_processes": self.acc.num_processes,
            "method": method_state,
            "rng": rng_json,
            **self.log.state_dict(),  # "window", "epoch_meter"
            "cost": self.cost.state_dict(),
            "metrics_bytes": self.metrics.size(),
            "validation": self.validator.state_dict() if self.validator is not None else None,
            "overfit": self.co_watch.state_dict() if self.co_watch is not None else None,
            "train_data": self.train_data_digest(),
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
                f"checkpointing (last good checkpoint: {self.last_checkpoint()})"
            )
        rng_states = gather_object([capture_rng()])
        if self.is_main:
            self.metrics.sync()  # the log up to the size this checkpoint records is on disk first
            save_checkpoint(self.run_dir / "checkpoints", self.position.global_step,
                            self.checkpoint_data(rng_states), keep=self.cfg.run.keep_checkpoints)
        self.saved_step = self.position.global_step
        self.acc.wait_for_everyone()

    def save_unless_saved(self) -> None:
        """A checkpoint of the current position, unless the newest one is already of it."""
        if self.saved_step != self.position.global_step:
            self.save()

    def last_checkpoint(self) -> str:
        """The newest checkpoint's path, or ``none`` (named in errors that stop a run)."""
        found = list_checkpoints(self.run_dir / "checkpoints")
        return str(found[-1]) if found else "none"

    def restore(self, point: ResumePoint) -> None:
        """Loads a verified checkpoint into every part of the trainer (writes nothing)."""
        data, state = point.data, point.data.state
        self._load_module(self.core, data.tensors.get("training", {}), point.path / "training.safetensors")
        self._load_optimizer(data.pickled.get("optimizer"), point.path / "optimizer.pt")
        self._check_same_training_data(state.get("train_data"), point.path)
        try:
            if state["steps_per_epoch"] != self.steps_per_epoch:
                raise ValueError(f"{state['steps_per_epoch']} steps per epoch there, {self.steps_per_epoch} now")
            if self.average.enabled:
                self.average.load_state_dict(data.tensors["average"])
            self.method.load_state_dict(join_tensors(state["method"], data.tensors.get("method", {})))
            rank = self.acc.process_index if self.acc.process_index < len(state["rng"]) else 0
            restore_rng(join_tensors(state["rng"][rank], data.tensors.get("rng", {})))
            self.position.load_state_dict(state["position"])
            self.log.load_state_dict(state)
            self.cost.load_state_dict(state.get("cost"))
            self.resume_metrics_bytes = int(state["metrics_bytes"])
            if self.validator is not None:
                self.validator.load_state_dict(state.get("validation"))
            if self.co_watch is not None:
                self.co_watch.load_state_dict(state.get("overfit"))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {point.path} does not fit this run ({type(exc).__name__}: {exc})") from None
        self.saved_step = self.position.global_step

    def train_data_digest(self) -> dict[str, Any]:
        """``{"n", "digest"}`` of the training split this run trains on (after any subset and
        validation split), recorded in each checkpoint (:mod:`atzoo.data.fingerprint`)."""
        from atzoo.data.fingerprint import cached_digest

        return {"n": len(self.bundle.train), "digest": cached_digest(self.bundle, "train")}

    def _check_same_training_data(self, recorded: Any, checkpoint: Path) -> None:
        """``--resume`` continues on the data the checkpoint was trained on, or not at all.

        The config names the data (``npz:PATH``); its content can change under the same
        name. A checkpoint written before the digest was recorded is not checked.

        Raises:
            DataError: the training split's content differs from the checkpoint's.
        """
        if not isinstance(recorded, dict) or not isinstance(recorded.get("digest"), str):
            return
        now = self.train_data_digest()
        if now["digest"] != recorded["digest"]:
            from atzoo.data.fingerprint import readable_name

            raise DataError(
                f"the training split of {readable_name(self.cfg.data.name)} changed since {checkpoint} was written "
                f"({recorded.get('n')} examples, digest {recorded['digest']}; now {now['n']}, {now['digest']}); "
                f"--resume would continue {self.run_dir} on other data: restore the data, or use --force or "
                "another --out for a new run")

    def announce_resume(self, point: ResumePoint) -> None:
        """Cuts metrics.jsonl back to the checkpoint and says where the run continues."""
        self.metrics.truncate(self.resume_metrics_bytes)
        for problem in point.skipped:
            self.log.event("checkpoint_skipped", f"skipping bad checkpoint: {problem}")
        self.log.event("resume", f"resuming from {point.path} (epoch {self.position.epoch}, "
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
