"""The leaderboard's *measured* cost ratio: shown only where load cannot move it.

The default cost column is the pass-count ratio (:mod:`atzoo.bench.run_passes`). A measured
time ratio is added beside it only when:

1. **Same device kind.** Every run of the entry and of the AT entry recorded one hardware
   profile (:data:`atzoo.engine.cost.PROFILE_KEYS`: device type and name, processes,
   threads, precision); the host may differ.
2. **A load-robust measure.** On GPUs, the wall time of the training steps (the work is
   on the device; the step ends with a host copy of the loss). On the CPU, the main
   thread's CPU time (``thread_s``) of runs with **one** intra-op thread: per-thread
   compute time, which neither waiting for a core nor other jobs change. Process CPU time
   with several threads counts OpenMP's spin-waiting, which grows with the load on the
   other cores (issue 25: an identical epoch read 1.14 s quiet, 17.54 s loaded), so such
   runs get no measured ratio. Nor do epochs whose steps had a core less than
   :data:`MIN_CORE_SHARE` of their wall time (``thread_s / wall_s``): on a contended machine
   even one thread's CPU time moves (shared caches and SMT siblings;
   ``benchmarks/cost_under_load.py`` measured AR-AT's thread time 11.5 % higher beside
   three busy loops on 2 cores).

Otherwise there is no measured ratio, and the reason is kept. Never a division of times
from different hardware or settings, or of wall-clock seconds on a shared CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atzoo.provenance import PROFILE_KEYS
from atzoo.report.runs import RunRecord
from atzoo.precision import precision_label  # noqa: F401  (re-exported)

def profile_key(profile: dict[str, Any]) -> tuple[Any, ...]:
    """The fields that must match for step times to be divided (the host may differ)."""
    return tuple(profile.get(k) for k in PROFILE_KEYS)


def describe(profile: dict[str, Any]) -> str:
    """``cpu (AMD EPYC 7B13), 1 process, 2 threads, precision fp32``."""
    processes = profile.get("processes")
    return (f"{profile.get('device')} ({profile.get('device_name')}), {processes} process"
            f"{'es' if processes != 1 else ''}, {profile.get('threads')} threads, precision {precision_label(profile.get('precision'))}")


def basis(profile: dict[str, Any]) -> tuple[str, str]:
    """(cost-row key, description): thread CPU time on the CPU, wall time on any accelerator."""
    return ("thread_s", "thread CPU time") if profile.get("device") == "cpu" else ("wall_s", "wall time")


#: Least share of an epoch's step wall time its one thread must have had a core for its
#: thread CPU time to count as load-robust.
MIN_CORE_SHARE = 0.9


def load_robust(profile: dict[str, Any]) -> str | None:
    """Why an epoch's times are not load-robust (None: they are; see the module docstring)."""
    if profile.get("device") != "cpu":
        return None
    if "thread_s" not in profile or not profile.get("thread_s"):
        return "it recorded no thread CPU time (made before atzoo did)"
    if profile.get("threads") != 1:
        return (f"it ran {profile.get('threads')} intra-op threads on the CPU, whose CPU time counts OpenMP "
                "spin-waiting that load inflates (set OMP_NUM_THREADS=1 for a measured figure)")
    share = float(profile["thread_s"]) / float(profile.get("wall_s") or float("inf"))
    if share < MIN_CORE_SHARE:
        return (f"its steps had a core {100 * share:.0f}% of their wall time (the machine was busy; below "
                f"{100 * MIN_CORE_SHARE:.0f}% even one thread's CPU time moves with the load)")
    return None


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
    unstable = next((load_robust(c) for c in epochs if load_robust(c)), None)
    if unstable:
        return None, f"{run.path}: {unstable}"
    return epochs[0], None


def run_seconds(run: RunRecord, profile: dict[str, Any]) -> float:
    """Mean step seconds per epoch on the profile's basis (CPU or wall time)."""
    key, _ = basis(profile)
    epochs = timed_epochs(run)
    return sum(float(c.get(key) or 0.0) for c in epochs) / len(epochs)


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
        return None, None, my_reason or f"AT: {ref_reason}"
    if profile_key(mine) != profile_key(ref):
        return None, None, f"it ran with {differences(mine, ref)}"
    ratio = _mean(step_seconds(entry_runs)[0]) / _mean(step_seconds(reference_runs)[0])
    machine = next((r.provenance.get("machine") for r in [*entry_runs, *reference_runs] if r.provenance.get("machine")),
                   None) or mine.get("device_name")
    return ratio, f"{basis(mine)[1]} per epoch of training steps on {machine} ({describe(mine)})", None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
