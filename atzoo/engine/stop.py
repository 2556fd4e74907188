"""SIGTERM: stop a training run at the next step boundary with a checkpoint.

Cluster schedulers end a job with SIGTERM and a grace period before SIGKILL: SLURM on
preemption and at the time limit (``--signal=TERM@SECONDS`` sends it earlier), Kubernetes
when a pod is evicted (``terminationGracePeriodSeconds``), ``docker stop``. A run that
receives it finishes the optimizer step it is in, writes a checkpoint of that step, and
stops with exit code 143 (128 + 15, the shell's code for "ended by SIGTERM"); the CLI
prints the ``--resume`` command that continues it bit for bit (docs/distributed.md shows a
requeueing SLURM array).

Ctrl-C (SIGINT) is not handled here: it stops at once (exit 130) and the resume starts
from the newest checkpoint already written, since someone at a terminal wants the prompt
back now, not after a step and a checkpoint.

Outside the training loop (set-up, the final export and evaluation) there is no step
boundary to wait for: SIGTERM stops at once there, as SIGINT does. A second SIGTERM while
the first waits for the step to end also stops at once.

Processes of a multi-process run may receive the signal at different steps; the flag is
summed over processes at every step boundary, so all of them stop at the same step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Callable

#: The signals handled here, and the exit code of a run they stopped (128 + signal number).
GRACEFUL_SIGNALS: tuple[signal.Signals, ...] = tuple(
    s for s in (getattr(signal, "SIGTERM", None),) if isinstance(s, signal.Signals)
)


class StopSignal(BaseException):
    """Raised when a graceful signal ends the run (a BaseException, like KeyboardInterrupt,
    so that no ``except Exception`` on the way swallows it).

    Attributes:
        signum: the signal received.
        checkpointed: whether a checkpoint of the step it stopped at was written.
    """

    def __init__(self, signum: int, checkpointed: bool = False) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpointed = signum, checkpointed

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class GracefulStop:
    """Context manager: installs the SIGTERM handler for a run and restores the old one.

    While :attr:`armed` (the training loop runs) the handler only records the signal; the
    trainer calls :meth:`requested` at each step boundary. Otherwise it raises
    :class:`StopSignal` at once. Signal handlers can be installed only in the main thread;
    elsewhere (a run started from a worker thread) this does nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.armed = False
        self._previous: dict[signal.Signals, Callable | int | None] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in GRACEFUL_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    @contextmanager
    def armed_for_steps(self) -> Iterator[None]:
        """While the training loop runs: SIGTERM is recorded for the next step boundary."""
        self.armed = True
        try:
            yield
        finally:
            self.armed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        self.received = signum
        if not (self.armed and first):
            raise StopSignal(signum)

    def requested(self, reduce_sum: Callable[[float], float] | None = None) -> int | None:
        """The signal to stop for at this step boundary, or None to go on.

        Args:
            reduce_sum: sums a number over processes (multi-process runs), so that every
                process stops at the same step when any of them received the signal.
        """
        local = float(self.received or 0)
        if reduce_sum is not None:
            total = reduce_sum(1.0 if local else 0.0)
            if total and not local:
                return int(GRACEFUL_SIGNALS[0])  # another process got it: stop with it
        return self.received
