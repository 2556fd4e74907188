"""The cost of training steps, measured so that runs can be compared honestly.

Wall-clock seconds per epoch measure the machine as much as the method: an AT run made
while other jobs share the cores takes twice as long without costing twice as much.
So the engine times every training step (attack, forward, backward, optimizer step;
not logging, checkpoints or evaluation) twice:

* **process CPU time** (``time.process_time``: every thread of this process, not the
  time spent waiting for a core), the stable measure on a CPU shared with other work;
* **thread CPU time** of the main thread (``time.thread_time``): in a one-thread run the
  whole step's compute, and the one CPU measure load cannot move -- with several
  intra-op threads OpenMP's spin-waiting at each barrier is counted as process CPU time
  and grows with the load on the other cores (an 11-step epoch read 1.14 s quiet and
  17.54 s loaded), so compare divides CPU times only of one-thread runs;
* **wall time** (``time.perf_counter``), the only meaningful one on a GPU, where the
  work happens off the CPU (each step ends with a device-to-host copy of the loss, so
  the step's kernels are finished when it is read).

Both are the main process's: with several processes the profile records how many, and
only runs with the same number are compared.

Each epoch row of ``metrics.jsonl`` gets a ``cost`` object with both sums and the
*hardware profile* they were taken on: device type and name (CPU model or GPU name),
processes, torch threads, precision and host. ``atzoo compare`` divides costs only
between runs with the same profile (host aside), from CPU time on the CPU and wall time
on GPUs (:mod:`atzoo.report.cost`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from atzoo.provenance import PROFILE_KEYS


def hardware_profile(device: Any, num_processes: int, precision: str) -> dict[str, Any]:
    """Where and how the steps run: device type and name, processes, threads, precision, host."""
    import socket

    import torch

    from atzoo.provenance import device_name

    return {
        "device": getattr(device, "type", str(device)), "device_name": device_name(device),
        "processes": int(num_processes), "threads": torch.get_num_threads(), "precision": precision,
        "host": socket.gethostname(),
    }


@dataclass
class CostMeter:
    """CPU and wall seconds of the training steps of one epoch.

    ``mixed`` marks an epoch resumed under another hardware profile than it began on:
    its sums are then not of one kind, and compare does not divide them.
    """

    profile: dict[str, Any]
    cpu_s: float = 0.0
    wall_s: float = 0.0
    thread_s: float = 0.0
    steps: int = 0
    mixed: bool = False

    @contextmanager
    def step(self) -> Iterator[None]:
        """Times the enclosed training step (exceptions propagate; the step is not counted)."""
        cpu, wall, thread = time.process_time(), time.perf_counter(), time.thread_time()
        yield
        self.cpu_s += time.process_time() - cpu
        self.wall_s += time.perf_counter() - wall
        self.thread_s += time.thread_time() - thread
        self.steps += 1

    def reset(self) -> None:
        """A new epoch."""
        self.cpu_s, self.wall_s, self.thread_s, self.steps, self.mixed = 0.0, 0.0, 0.0, 0, False

    def row(self) -> dict[str, Any]:
        """The ``cost`` object of an epoch row."""
        return {"cpu_s": self.cpu_s, "wall_s": self.wall_s, "thread_s": self.thread_s, "steps": self.steps,
                "mixed": self.mixed,
                **self.profile}

    def state_dict(self) -> dict[str, Any]:
        return self.row()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continues an epoch from a checkpoint (``None``: a checkpoint without a meter)."""
        if not isinstance(state, dict):
            self.reset()
            self.mixed = True  # the epoch's first part was not measured
            return
        self.cpu_s, self.wall_s = float(state["cpu_s"]), float(state["wall_s"])
        self.thread_s = float(state.get("thread_s") or 0.0)
        self.steps = int(state["steps"])
        same = all(state.get(k) == self.profile.get(k) for k in PROFILE_KEYS)
        # A checkpoint from before thread time was recorded: the epoch's thread time is partial.
        self.mixed = bool(state.get("mixed")) or not same or "thread_s" not in state
