"""Logging of a run: running meters, ``metrics.jsonl`` rows, trackers, events, diagnostics.

:class:`Logging` is the part of :class:`~atzoo.engine.trainer.Trainer` that writes the
``step``, ``epoch``, ``diagnostics`` and ``event`` rows (and sends their numbers to the
Accelerate trackers). It uses the trainer's ``cfg``, ``acc``, ``is_main``, ``position``,
``window``, ``epoch_meter``, ``cost``, ``last_lr``, ``last_batch``, ``average``, ``metrics``,
``reporter``, ``method`` and ``core``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from atzoo.files.common import flatten
from atzoo.config import RunConfig, config_to_dict


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


class Logging:
    """The logging part of the trainer (see the module docstring)."""

    def _event(self, event: str, text: str, **extra: Any) -> None:
        self.reporter.message(text)
        self.metrics.write({"kind": "event", "event": event, "step": self.position.global_step,
                            "message": text, **extra})

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


def flatten_numbers(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested row as ``a/b`` keys (what trackers accept)."""
    return {k: float(v) for k, v in flatten(row, prefix, sep="/").items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def tracker_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as ``section.key`` scalars (TensorBoard's hparams take no lists)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config_to_dict(cfg)).items()}
