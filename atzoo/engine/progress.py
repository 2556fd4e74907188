"""The engine's console output: a rich progress bar and one-line messages (main process only).

The bar (loss, accuracy, lr, images/s, ETA) is shown only when stderr is a terminal;
messages such as "resuming from ..." and one plain line per epoch (epoch k/N, loss,
accuracies, lr, seconds, ETA) are always printed on the main process, to stderr, so that
a log without a terminal (nohup, SLURM) shows progress and the CLI's stdout carries only
the final summary.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Reporter:
    """Progress bar and messages for a training run.

    Args:
        enabled: whether this process prints at all (the main process).
        total_steps: optimizer steps in the whole run (for the bar and ETA).
        console: where to print (stderr by default).
    """

    def __init__(self, *, enabled: bool, total_steps: int, epochs: int | None = None,
                 console: Console | None = None) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self.console = console or Console(stderr=True)
        self.total_steps = total_steps
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._entered = time.perf_counter()
        self._started: tuple[float, int] | None = None  # (time, step) where this process began

    def __enter__(self) -> "Reporter":
        self._entered, self._started = time.perf_counter(), None  # the pace counts training, not set-up
        if self.enabled and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                TextColumn("step"),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}  "
                           "lr {task.fields[lr]:.4g}  {task.fields[ips]:.0f} img/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=self.total_steps, epoch=self.epoch_label(0), loss=float("nan"), acc=float("nan"), lr=0.0, ips=0.0
            )
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def eta(self, step: int) -> float | None:
        """Seconds left at ``step``, from the pace of the steps this process has run."""
        if self._started is None:
            return None
        began, first = self._started
        now = time.perf_counter()
        done = step - first
        return (now - began) / done * max(self.total_steps - step, 0) if done > 0 else None

    def epoch_label(self, epoch: int) -> str:
        """``k/N`` for the 0-based ``epoch``: the numbering of the epoch lines (``epoch 7/60``)."""
        return f"{epoch + 1}/{self.epochs}" if self.epochs else str(epoch + 1)

    def advance_to(self, step: int, *, epoch: int | None = None, **fields: float) -> None:
        """Moves the bar to ``step`` optimizer steps (of the whole run) and updates the shown
        fields; ``epoch`` is 0-based and shown as the epoch lines number it (``7/60``)."""
        if self._started is None:
            self._started = (self._entered, step - 1)
        if self._progress is not None and self._task is not None:
            shown = {"epoch": self.epoch_label(epoch)} if epoch is not None else {}
            self._progress.update(self._task, completed=step, **shown, **fields)

    def message(self, text: str) -> None:
        """Prints one line (main process only), above the bar if one is shown."""
        if self.enabled:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)
