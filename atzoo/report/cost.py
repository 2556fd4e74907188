"""The leaderboard's cost column: a ratio to AT only where it means what it says.

Rules (documented for users in ``docs/cli.md``):

1. **Measured, same hardware.** When an entry's runs and the AT entry's runs all
   recorded one hardware profile (:data:`atzoo.engine.cost.PROFILE_KEYS`: device type
   and name, processes, threads, precision), the ratio divides their step times per
   epoch: process **CPU time** on the CPU (it does not count time spent waiting for a
   core, so other jobs on the machine do not change it) and **wall time** on GPUs.
2. **Recorded benchmark.** Otherwise the ratio ``atzoo bench step-cost`` recorded for
   the method on the hardware the entry ran on (:mod:`atzoo.bench.records`), marked as
   such, with the reason the runs' own times were not divided.
3. **Nothing**, with the reason, when neither exists. Never a division of times from
   different hardware or settings.

Runs made before atzoo recorded CPU time and hardware keep the old ratio of wall-clock
seconds per epoch, but only between such runs, and the source says what it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atzoo.provenance import PROFILE_KEYS
from atzoo.report.runs import RunRecord
from atzoo.precision import precision_label  # noqa: F401  (re-exported)

#: ``cost_source`` of ratios between older runs that recorded wall-clock seconds only.
LEGACY_SOURCE = ("wall-clock seconds per epoch of runs that recorded no hardware profile "
                 "(made before atzoo recorded CPU time); machine load can distort it")


def profile_key(profile: dict[str, Any]) -> tuple[Any, ...]:
    """The fields that must match for step times to be divided (the host may differ)."""
    return tuple(profile.get(k) for k in PROFILE_KEYS)


def describe(profile: dict[str, Any]) -> str:
    """``cpu (AMD EPYC 7B13), 1 process, 2 threads, precision fp32``."""
    processes = profile.get("processes")
    return (f"{profile.get('device')} ({profile.get('device_name')}), {processes} process"
            f"{'es' if processes != 1 else ''}, {profile.get('threads')} threads, precision {precision_label(profile.get('precision'))}")


def basis(profile: dict[str, Any]) -> tuple[str, str]:
    """(cost-row key, description): CPU time on the CPU, wall time on any accelerator."""
    return ("cpu_s", "process CPU time") if profile.get("device") == "cpu" else ("wall_s", "wall time")


def timed_epochs(run: RunRecord) -> list[dict[str, Any]]:
    """The cost rows of a run's epochs measured on one profile throughout.

    An epoch resumed from a checkpoint made under another profile (or one without a
    meter) is ``mixed``: part of its time was measured elsewhere, so it does not count.
    """
    return [c for c in run.epoch_costs if not c.get("mixed")]


def run_profile(run: RunRecord) -> tuple[dict[str, Any] | None, str | None]:
    """(the one profile of a run's epochs, None) or (None, why the run has none)."""
    if not run.epoch_costs:
        return None, f"{run.path} recorded no CPU time or hardware profile"
    epochs = timed_epochs(run)
    if not epochs:
        return None, f"{run.path} was resumed on other hardware or settings within each of its epochs"
    if len({profile_key(c) for c in epochs}) > 1:
        return None, f"{run.path} ran its epochs on different hardware or settings"
    return epochs[0], None


def run_seconds(run: RunRecord, profile: dict[str, Any]) -> float:
    """Mean step seconds per epoch on the profile's basis (CPU or wall time)."""
    key, _ = basis(profile)
    epochs = timed_epochs(run)
    return sum(float(c[key]) for c in epochs) / len(epochs)


def entry_profile(runs: Sequence[RunRecord]) -> tuple[dict[str, Any] | None, str | None]:
    """The profile all of an entry's runs share, or (None, the reason)."""
    profiles = []
    for run in runs:
        profile, reason = run_profile(run)
        if profile is None:
            return None, reason
        profiles.append(profile)
    if len({profile_key(p) for p in profiles}) > 1:
        return None, "its seeds ran on different hardware or settings"
    return (profiles[0], None) if profiles else (None, "no runs")


def step_seconds(runs: Sequence[RunRecord]) -> tuple[list[float], str | None]:
    """Each run's step seconds per epoch and their basis, when the runs share one profile."""
    profile, _ = entry_profile(runs)
    if profile is None:
        return [], None
    return [run_seconds(r, profile) for r in runs], basis(profile)[1]


def differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``device cuda (AT: cpu), precision bf16 (AT: no)``: the profile fields that differ."""
    return ", ".join(f"{k} {a.get(k)} (AT: {b.get(k)})" for k in PROFILE_KEYS if a.get(k) != b.get(k))


def measured_ratio(entry_runs: Sequence[RunRecord], reference_runs: Sequence[RunRecord]
                   ) -> tuple[float | None, str | None, str | None]:
    """(ratio, source, reason when None) from the runs' own step times.

    The ratio divides the mean over seeds of each side's seconds per epoch.
    """
    mine, my_reason = entry_profile(entry_runs)
    ref, ref_reason = entry_profile(reference_runs)
    if mine is None or ref is None:
        legacy = all(not r.epoch_costs for r in [*entry_runs, *reference_runs])
        if legacy:
            return _legacy_ratio(entry_runs, reference_runs)
        return None, None, my_reason or f"AT: {ref_reason}"
    if profile_key(mine) != profile_key(ref):
        return None, None, f"it ran with {differences(mine, ref)}"
    ratio = _mean(step_seconds(entry_runs)[0]) / _mean(step_seconds(reference_runs)[0])
    return ratio, f"{basis(mine)[1]} per epoch of training steps, same hardware: {describe(mine)}", None


def _legacy_ratio(entry_runs: Sequence[RunRecord], reference_runs: Sequence[RunRecord]
                  ) -> tuple[float | None, str | None, str | None]:
    mine = [r.seconds_per_epoch for r in entry_runs if r.seconds_per_epoch is not None]
    ref = [r.seconds_per_epoch for r in reference_runs if r.seconds_per_epoch is not None]
    if not mine or not ref:
        return None, None, "no complete epoch timed"
    return _mean(mine) / _mean(ref), LEGACY_SOURCE, None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def bench_ratio(method: str, runs: Sequence[RunRecord], folder: Path | None = None) -> tuple[float, str] | None:
    """The ``atzoo bench step-cost`` ratio recorded for the hardware the runs ran on."""
    from atzoo.report.bench_records import lookup_ratio

    profile, _ = entry_profile(runs)
    return lookup_ratio(profile, method, folder) if profile is not None else None
