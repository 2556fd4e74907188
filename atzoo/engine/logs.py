"""Logging of a run: running meters, ``metrics.jsonl`` rows, trackers, events, diagnostics.

:class:`RunLog` is the component of :class:`~atzoo.engine.trainer.Trainer` that writes the
``step``, ``epoch``, ``diagnostics`` and ``event`` rows (and sends their numbers to the
Accelerate trackers). Everything it reads is given to its ``__init__``; it owns the
running meters. :class:`Position` is the run's counters, shared by the components.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from atzoo.config import RunConfig
from atzoo.engine.averaging import WeightAverage
from atzoo.engine.cost import CostMeter
from atzoo.engine.progress import Reporter
from atzoo.engine.rundir import MetricsLog
from atzoo.engine.trackers import log_final, start_trackers
from atzoo.files.common import flatten


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

    def start(self, now: float) -> None:
        """Counts time from ``now`` (the loop's start, after the set-up)."""
        self.started = now

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
class Position:
    """Where training is: epoch in progress, its batches consumed, optimizer steps done.

    One object per run, shared by the trainer (which advances it) and the parts that
    report or checkpoint it; a resume loads it in place (:meth:`load_state_dict`).
    """

    epoch: int = 0
    batch: int = 0
    global_step: int = 0

    def batch_done(self) -> None:
        """One loader batch of the epoch consumed."""
        self.batch += 1

    def step_done(self) -> None:
        """One optimizer step done."""
        self.global_step += 1

    def epoch_done(self) -> None:
        """The epoch is over: the next one starts at its first batch."""
        self.epoch += 1
        self.batch = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "global_step": self.global_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        loaded = Position(**state)  # TypeError on unknown or missing keys, as before
        self.epoch, self.batch, self.global_step = loaded.epoch, loaded.batch, loaded.global_step


@dataclass
class StepValues:
    """One batch's loss parts, loss and accuracy, averaged over all processes."""

    parts: dict[str, float]
    loss: float
    correct: float
    count: float


class RunLog:
    """What a run reports while it trains: events, ``step``/``epoch``/``diagnostics`` rows of
    metrics.jsonl, the Accelerate trackers and the running meters behind them.

    It owns the meters (the logging window and the epoch), the last learning rate and the
    last batch (for the step row's method statistics and the diagnostics); a checkpoint
    stores the meters through :meth:`state_dict`.

    Args:
        cfg: the run's config.
        accelerator: the run's Accelerator (trackers, main process).
        metrics: the run's ``metrics.jsonl``.
        reporter: the progress bar and console messages.
        position: the run's counters (read only here; the trainer advances them).
        cost: the per-epoch cost meter (its row goes into each epoch row).
        average: the SWA/EMA average (its count goes into each epoch row).
        core: the training module (diagnostics read its model and method modules).
        method: the method (its diagnostics hooks).
        loader: the training loader (the share of extra images per batch, with ``data.extra``).
    """

    def __init__(self, cfg: RunConfig, accelerator: Any, *, metrics: MetricsLog, reporter: Reporter,
                 position: Position, cost: CostMeter, average: WeightAverage, core: Any, method: Any,
                 loader: Any) -> None:
        self.cfg = cfg
        self.acc = accelerator
        self.is_main = accelerator.is_main_process
        self.metrics = metrics
        self.reporter = reporter
        self.position = position
        self.cost = cost
        self.average = average
        self.core = core
        self.method = method
        self.loader = loader
        self.window, self.epoch_meter = Meter(), Meter()
        self.last_lr = cfg.optim.lr
        self.last_batch: tuple[Tensor, Tensor | None, Tensor, dict[str, float]] | None = None

    def event(self, event: str, text: str, **extra: Any) -> None:
        """Prints ``text`` and logs it as an ``event`` row."""
        self.reporter.message(text)
        self.metrics.write({"kind": "event", "event": event, "step": self.position.global_step,
                            "message": text, **extra})

    def log_config_notes(self, notes: list[str]) -> None:
        """Prints and logs (``event: config`` rows) the lines that say how the config was made."""
        for note in notes:
            self.event("config", note)

    # ------------------------------------------------------------------ meters
    def start_clock(self, now: float) -> None:
        """Throughput counts training only, not the set-up: both meters start at ``now``."""
        self.window.start(now)
        self.epoch_meter.start(now)

    def new_epoch(self) -> None:
        """A fresh epoch meter (at the start of an epoch)."""
        self.epoch_meter = Meter()

    def add_batch(self, values: StepValues, batch: tuple[Tensor, Tensor | None, Tensor, dict[str, float]]) -> None:
        """One training batch's reduced values, and the batch ``(x, x_adv, y, stats)`` itself."""
        self.window.add(values.parts, values.loss, values.correct, values.count)
        self.epoch_meter.add(values.parts, values.loss, values.correct, values.count)
        self.last_batch = batch

    def epoch_summary(self) -> dict[str, Any]:
        """Means over the epoch so far (:meth:`Meter.summary`)."""
        return self.epoch_meter.summary()

    def bar_fields(self) -> dict[str, float]:
        """Loss, accuracy and images/s of the current window, for the progress bar."""
        summary = self.window.summary()
        return {"loss": summary["loss"], "acc": summary["train_acc"], "ips": summary["images_per_s"]}

    def state_dict(self) -> dict[str, Any]:
        """The meters, as each checkpoint stores them (``window``, ``epoch_meter``)."""
        return {"window": self.window.state_dict(), "epoch_meter": self.epoch_meter.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the meters of a checkpoint's state (raises KeyError/TypeError if absent)."""
        self.window = Meter.from_state(state["window"])
        self.epoch_meter = Meter.from_state(state["epoch_meter"])

    # ------------------------------------------------------------------ rows
    def after_step(self, lr: float) -> None:
        """After each optimizer step: the lr it used, the bar, the step row and diagnostics when due."""
        self.last_lr = lr
        step = self.position.global_step
        self.reporter.advance_to(step, epoch=self.position.epoch, lr=lr, **self.bar_fields())
        if step % self.cfg.run.log_every == 0:
            self.log_window(lr)
        if self.cfg.diagnostics.every > 0 and step % self.cfg.diagnostics.every == 0:
            self.log_step_diagnostics()

    def log_window(self, lr: float) -> None:
        """One ``step`` row of metrics.jsonl (and the trackers) for the last window."""
        summary = self.window.summary()
        row = {"kind": "step", "epoch": self.position.epoch, "step": self.position.global_step,
               "loss": summary["loss"], "parts": summary["parts"], "train_acc": summary["train_acc"], "lr": lr,
               "images_per_s": summary["images_per_s"], "stats": self.last_batch[3] if self.last_batch else {}}
        if hasattr(self.loader, "take_shares"):  # data.extra: the share of extra images per batch
            from atzoo.data.mixing import share_summary

            row["extra_share"] = share_summary(self.loader.take_shares())
        self.metrics.write(row)
        self.track("train", row)
        self.window = Meter()

    def log_epoch(self, epoch: int, *, partial: bool = False) -> None:
        """The ``epoch`` row: means over the epoch, seconds, images/s, BN diagnostics."""
        summary = self.epoch_meter.summary()
        row = {"kind": "epoch", "epoch": epoch, "step": self.position.global_step, "partial": partial,
               "loss": summary["loss"], "parts": summary["parts"], "train_acc": summary["train_acc"],
               "lr": self.last_lr, "seconds": summary["seconds"],
               "images_per_s": summary["images_per_s"], "cost": self.cost.row()}
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

    def start_trackers(self, installed: list[str], *, run_dir: Path, fresh: bool) -> None:
        """Says which configured trackers are missing, then starts the installed ones
        (:func:`atzoo.engine.trackers.start_trackers`; ``fresh``: not a resumed run)."""
        missing = sorted(set(self.cfg.run.trackers) - set(installed))
        if missing:
            self.event("trackers", f"tracker(s) {', '.join(missing)} not installed; logging to metrics.jsonl")
        if installed:
            project = start_trackers(self.acc, self.cfg, run_dir, fresh=fresh)
            named = f" (project '{project}')" if set(installed) - {"tensorboard"} else ""
            self.event("trackers", f"logging to {', '.join(installed)}{named}")

    def finish_trackers(self, final_eval: dict[str, Any]) -> None:
        """The final evaluation's numbers to the trackers, then closes every tracker (end of the run)."""
        log_final(self.acc, self.cfg, final_eval, self.position.global_step)
        for tracker in self.acc.trackers:
            tracker.finish()


def flatten_numbers(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested row as ``a/b`` keys (what trackers accept)."""
    return {k: float(v) for k, v in flatten(row, prefix, sep="/").items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
