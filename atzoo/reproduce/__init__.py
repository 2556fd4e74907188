"""``atzoo reproduce``: a paper table as one command, diffed against the paper.

    session = prepare("ar-at-table3", rows=["cifar10-resnet18/*"], seeds=[0, 1], scale="cpu-small",
                      data={"cifar10": "npz:../shared/data/cifar10_subset.npz"})
    counts = run_missing(session)          # trains what is missing, resumes what was interrupted
    rep, written = collect(session)        # reproduction.{md,json,html} + tradeoff.png

* Tables are data: :mod:`atzoo.reproduce.manifest` reads ``atzoo/reproduce/tables/*.yaml``.
* Runs are ordinary run directories made by the engine (:mod:`atzoo.reproduce.runner`),
  so ``--emit-jobs`` can hand them to other machines and ``collect`` reads whatever finished.
* Verdicts and orderings: :mod:`atzoo.reproduce.verdict`; reports: :mod:`atzoo.reproduce.report`.
* Scaled reproductions: :mod:`atzoo.reproduce.scale`; GPU-hour estimates: :mod:`atzoo.reproduce.cost`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from atzoo.reproduce.manifest import Row, Table, load_table, load_tables, table_names
from atzoo.reproduce.runner import PlannedRun, default_out, plan_runs, run_state, train_run
from atzoo.reproduce.scale import SCALES, Scale, get_scale

__all__ = [
    "SCALES", "PlannedRun", "Row", "Scale", "Session", "Table", "collect", "emit_jobs", "load_table", "load_tables",
    "prepare", "run_missing", "table_names",
]


@dataclass
class Session:
    """One invocation's table, selection and plan."""

    table: Table
    rows: list[Row]
    scale: Scale | None
    data: dict[str, str]
    out: Path
    planned: list[PlannedRun]


def prepare(
    table: str, *, rows: list[str] | None = None, seeds: list[int] | None = None, scale: str | None = None,
    data: dict[str, str] | None = None, out: str | Path | None = None,
) -> Session:
    """Loads the table, selects rows and seeds, resolves every run's config; writes nothing.

    Raises:
        ConfigError: unknown table, row pattern or scale; a recipe that does not build.
    """
    from atzoo.files.paths import check_output_path

    loaded = load_table(table)
    preset = get_scale(scale)
    selected = loaded.select(rows)
    folder = Path(out) if out is not None else default_out(loaded, preset)
    check_output_path(folder, "--out", directory=True)
    planned = plan_runs(loaded, selected, out=folder, seeds=seeds, scale=preset, data=data)
    return Session(loaded, selected, preset, dict(data or {}), folder, planned)


def states(session: Session) -> list[str]:
    """``done`` / ``partial`` / ``missing`` per planned run (raises on a foreign directory)."""
    return [run_state(p) for p in session.planned]


def run_missing(
    session: Session, *, on_start: Callable[[PlannedRun, str], None] | None = None,
    on_done: Callable[[PlannedRun], None] | None = None,
) -> dict[str, int]:
    """Trains every missing run and resumes every interrupted one, in table order.

    Every directory is checked before the first run starts, so a conflicting one stops
    the command before anything is trained; each run's state is read again just before
    it would start, so a run that another invocation finished meanwhile is reused.
    Concurrent invocations on one folder must still take disjoint runs (``--rows``,
    ``--seeds``, or the lines of ``--emit-jobs``): a run being trained looks interrupted.

    Returns:
        counts: ``{"reused": finished runs left alone, "resumed": ..., "trained": ...}``.
    """
    states(session)
    counts = {"reused": 0, "resumed": 0, "trained": 0}
    for planned in session.planned:
        state = run_state(planned)
        if state == "done":
            counts["reused"] += 1
            continue
        if on_start is not None:
            on_start(planned, state)
        train_run(planned, resume=state == "partial")
        counts["resumed" if state == "partial" else "trained"] += 1
        if on_done is not None:
            on_done(planned)
    return counts


def collect(
    session: Session, *, command: str = "", wall_seconds: float | None = None, write: bool = True,
):
    """Builds the report from every run that has finished; writes it into ``session.out``.

    Returns:
        ``(Reproduction, {file name: path})``.
    """
    from atzoo.reproduce.report import Reproduction, leaderboard_of, write_report
    from atzoo.reproduce.verdict import check_claims, row_results

    scaled = session.scale is not None
    results = row_results(session.table, session.planned, scaled)
    claims = check_claims(session.table, results)
    rep = Reproduction(session.table, session.scale, results, claims, leaderboard_of(results, scaled),
                       command=command, data=session.data, wall_seconds=wall_seconds)
    written = write_report(rep, session.out) if write else {}
    return rep, written


def emit_jobs(session: Session, path: str | Path, *, launcher: str = "none") -> int:
    """Writes one self-contained shell line per run to ``path`` (atomically); returns the count.

    Each line skips a finished run (its ``eval.json`` exists) and otherwise trains or resumes
    it, so a job array can be resubmitted after failures.

    Raises:
        AtzooError: ``path`` is a folder or cannot be written.
    """
    from atzoo.files.paths import check_output_path

    target = Path(path)
    check_output_path(target, "--emit-jobs", directory=False)
    from atzoo.files.common import atomic_write_text

    lines = [p.command(launcher) for p in session.planned]
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, "\n".join(lines) + "\n")
    return len(lines)


def timed(fn: Callable[[], dict[str, int]]) -> tuple[dict[str, int], float]:
    """``fn()`` and its wall-clock seconds (for the report's wall-time line)."""
    start = time.perf_counter()
    return fn(), time.perf_counter() - start
