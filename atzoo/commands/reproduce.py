"""``atzoo reproduce TABLE``: run a paper table's missing runs and diff it against the paper.

Examples::

    atzoo reproduce --list
    atzoo reproduce ar-at-table3 --plan
    atzoo reproduce ar-at-table3 --emit-jobs jobs.txt --launcher accelerate
    atzoo reproduce ar-at-table3 --collect
    atzoo reproduce ar-at-table3 --rows 'cifar10-resnet18/*' --seeds 0,1 --scale cpu-small \\
        --data cifar10=npz:../shared/data/cifar10_subset.npz
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table as RichTable

from atzoo.errors import AtzooError, ConfigError


#: Most seeds one ``--seeds`` may name (a paper table uses five; a typo like 0-3000000000
#: is refused before a list of three billion is built).
MAX_SEEDS = 1000


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` or ``"0-4"`` -> a list of seeds, each in ``[0, MAX_SEED]``.

    Every range is checked (bounds, order, size) before any list is built, so a huge range
    costs nothing.

    Raises:
        ConfigError: not a comma list of integers or ``low-high`` ranges; a seed outside
            ``[0, MAX_SEED]``; more than :data:`MAX_SEEDS` seeds.
    """
    from atzoo.files.common import MAX_SEED, check_int_range

    if text is None:
        return None
    usage = f"--seeds '{text[:60]}' must be non-negative integers like 0,1,2 or 0-4"
    spans: list[tuple[int, int]] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            low, sep, high = part.partition("-")
            spans.append((int(low), int(high)) if sep else (int(part), int(part)))
    except ValueError:
        raise ConfigError(usage) from None
    if not spans:
        raise ConfigError(usage)
    try:
        for low, high in spans:
            check_int_range(low, "--seeds", 0, MAX_SEED)
            check_int_range(high, "--seeds", 0, MAX_SEED)
    except AtzooError as exc:
        raise ConfigError(str(exc)) from None
    if any(high < low for low, high in spans):
        raise ConfigError(f"{usage}; a range goes from low to high")
    count = sum(high - low + 1 for low, high in spans)
    if count > MAX_SEEDS:
        raise ConfigError(f"--seeds '{text[:60]}' names {count} seeds; at most {MAX_SEEDS} per invocation")
    seeds = [seed for low, high in spans for seed in range(low, high + 1)]
    return list(dict.fromkeys(seeds))


def _split(values: list[str] | None) -> list[str] | None:
    items = [v.strip() for value in values or [] for v in value.split(",") if v.strip()]
    return items or None


def print_list(console: Console) -> None:
    from atzoo.reproduce import SCALES, load_tables

    table = RichTable(title="reproducible tables (atzoo reproduce TABLE)")
    table.add_column("table", style="bold cyan", no_wrap=True)
    for column in ("rows", "runs", "what"):
        table.add_column(column, no_wrap=column != "what")
    for t in load_tables():
        default = t.select()
        runs = sum(len(r.seeds) for r in default)
        extra = len(t.rows) - len(default)
        rows = f"{len(default)}" + (f" (+{extra} reference)" if extra else "")
        table.add_row(t.name, rows, str(runs), t.title)
    console.print(table)
    scales = RichTable(title="--scale presets")
    scales.add_column("scale", style="bold cyan", no_wrap=True)
    scales.add_column("what")
    for scale in SCALES.values():
        scales.add_row(scale.name, f"{scale.summary}; {scale.describe().split(': ', 1)[1]}")
    console.print(scales)


def print_plan(console: Console, session, step_cost: Optional[Path]) -> None:
    """Runs, destinations, states and the A100 estimate."""
    from atzoo.reproduce import states
    from atzoo.reproduce.cost import estimate_runs

    t = session.table
    found = states(session)
    estimates = estimate_runs(session.planned, step_cost)
    banner = session.scale.describe() if session.scale else "full size (the recipes as published)"
    console.print(f"[bold]{t.title}[/bold]\n{banner}\nruns under {session.out}", highlight=False, soft_wrap=True)
    grid = RichTable(show_lines=False)
    grid.add_column("row", no_wrap=True)
    for column in ("seeds", "paper runs", "state", "A100 h (est.)", "run directories"):
        grid.add_column(column)
    for row in session.rows:
        mine = [(p, s, e) for p, s, e in zip(session.planned, found, estimates) if p.row == row]
        state = ", ".join(f"{sum(1 for _, s, _ in mine if s == k)} {k}" for k in ("done", "partial", "missing")
                          if any(s == k for _, s, _ in mine))
        hours = sum(e.seconds for _, _, e in mine) / 3600
        where = str(mine[0][0].run_dir.parent / "s*") if mine else ""
        grid.add_row(row.id, ",".join(str(p.seed) for p, _, _ in mine),
                     str(row.paper_runs) if row.paper_runs else "—", state, f"{hours:.1f}", where)
    console.print(grid)
    console.print(summary_line(session, found, estimates), highlight=False, soft_wrap=True)
    for note in t.notes:
        console.print(f"- {note}", highlight=False, soft_wrap=True)
    bases = dict.fromkeys(f"{p.row.key} {p.config.model.name}: {e.basis}" for p, e in zip(session.planned, estimates))
    console.print("estimate basis: " + "; ".join(bases) + ". " + ESTIMATE_NOTE, highlight=False, soft_wrap=True)
    if session.planned:
        console.print(f"first run: {session.planned[0].command()}", highlight=False, soft_wrap=True)


#: How every estimate is made (docs/reproduction.md, atzoo/reproduce/cost.py).
ESTIMATE_NOTE = ("Seconds per batch from the AR-AT paper's Table 19, scaled so that an AR-AT CIFAR-10 run takes its "
                 "Appendix A.2 times (ResNet-18 2 h, WRN-34-10 10 h); training only, one A100; evaluation adds its own time.")


def summary_line(session, found: list[str], estimates) -> str:
    """``140 runs = 5 seeds x 7 methods x 4 settings; ... A100 GPU-hours``."""
    seeds = sorted({p.seed for p in session.planned})
    labels = list(dict.fromkeys(r.key for r in session.rows))
    settings = list(dict.fromkeys(r.setting for r in session.rows))
    total = sum(e.seconds for e in estimates) / 3600
    todo = sum(e.seconds for e, s in zip(estimates, found) if s != "done") / 3600
    shape = f"{len(seeds)} seeds x {len(labels)} methods x {len(settings)} settings"
    averaged = sorted({r.key for r in session.rows if r.paper_runs and r.paper_runs > 1})
    counts = sorted({r.paper_runs for r in session.rows if r.paper_runs and r.paper_runs > 1})
    paper = (f"; the paper gives mean ± std of {'/'.join(map(str, counts))} runs only for {', '.join(averaged)}"
             ", its other rows are single numbers" if averaged else "")
    hours = lambda h: f"{h:.1f}" if h < 10 else f"{h:.0f}"  # noqa: E731
    return (f"{len(session.planned)} runs = {shape}{paper}. Estimated A100 training time: {hours(total)} GPU-hours "
            f"({hours(todo)} for the {len(found) - found.count('done')} runs not finished).")


def register(app: typer.Typer) -> None:
    """Adds ``atzoo reproduce`` to the CLI."""

    @app.command("reproduce")
    def reproduce_command(
        table: Optional[str] = typer.Argument(None, help="Table name (see --list) or a manifest .yaml file."),
        list_tables: bool = typer.Option(False, "--list", help="List the reproducible tables and scale presets."),
        plan: bool = typer.Option(False, "--plan", help="Print the runs, destinations and GPU-hour estimate; run nothing."),
        emit_jobs: Optional[Path] = typer.Option(None, "--emit-jobs", help="Write one shell line per run to FILE."),
        force: bool = typer.Option(False, "--force", help="With --emit-jobs: replace an existing FILE."),
        launcher: str = typer.Option("none", "--launcher", help="none | python | accelerate | torchrun (for --emit-jobs)."),
        collect_only: bool = typer.Option(False, "--collect", help="Only build the report from the finished runs."),
        rows: Optional[list[str]] = typer.Option(None, "--rows", help="Row ids or globs (comma-separated or repeated)."),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds for every row, e.g. 0,1 or 0-4."),
        scale: Optional[str] = typer.Option(None, "--scale", help="A scale preset (see --list)."),
        data: Optional[list[str]] = typer.Option(None, "--data", help="Dataset stand-in, e.g. cifar10=npz:PATH."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder of runs and report (default reproductions/...)."),
        step_cost: Optional[Path] = typer.Option(None, "--step-cost", help="'atzoo bench step-cost --json' file."),
    ) -> None:
        """Run a paper table's missing runs, evaluate, and write reproduction.{md,json,html} + plot."""
        from atzoo.reproduce import collect, emit_jobs as write_jobs, prepare, run_missing, timed
        from atzoo.reproduce.runner import parse_data_map

        console = Console()
        if list_tables:
            print_list(console)
            return
        if table is None:
            raise ConfigError("name a table (see 'atzoo reproduce --list')")
        if sum(bool(x) for x in (plan, emit_jobs, collect_only)) > 1:
            raise ConfigError("--plan, --emit-jobs and --collect are separate actions; give one")
        if emit_jobs is not None:  # before the plan: an existing file is refused at once
            from atzoo.files.paths import check_new_file

            check_new_file(emit_jobs, "--emit-jobs", force=force)
        session = prepare(table, rows=_split(rows), seeds=parse_seeds(seeds), scale=scale,
                          data=parse_data_map(_split(data)), out=out)
        if plan:
            print_plan(console, session, step_cost)
            return
        if emit_jobs is not None:
            n = write_jobs(session, emit_jobs, launcher=launcher, force=force)
            console.print(f"wrote {n} commands to {emit_jobs}; then: atzoo reproduce {table} --collect"
                          + _flags(rows, seeds, scale, data, out), highlight=False, soft_wrap=True)
            return
        command = f"atzoo reproduce {shlex.quote(table)}" + _flags(rows, seeds, scale, data, out)
        wall = None
        if not collect_only:
            def started(p, state: str) -> None:
                console.print(f"{'resuming' if state == 'partial' else 'training'} {p.row.id} seed {p.seed} -> "
                              f"{p.run_dir}", highlight=False, soft_wrap=True)

            counts, wall = timed(lambda: run_missing(session, on_start=started,
                                                     on_done=lambda p: collect(session, command=command)))
            console.print(", ".join(f"{v} {k}" for k, v in counts.items()), highlight=False)
        rep, written = collect(session, command=command, wall_seconds=wall)
        console.print(rep.banner, highlight=False, soft_wrap=True)
        for result in rep.results:
            console.print(f"{result.row.id}: {result.verdict} ({len(result.runs)}/{result.planned} seeds)",
                          highlight=False, soft_wrap=True)
        for check in rep.claims:
            console.print(f"{check.setting}: {check.claim.text}: {check.outcome}", highlight=False, soft_wrap=True)
        console.print(f"report: {written.get('reproduction.md', session.out)}", highlight=False, soft_wrap=True)


def _flags(rows, seeds, scale, data, out) -> str:
    parts: list[str] = []
    for name, values in (("--rows", rows), ("--data", data)):
        parts += [f"{name} {shlex.quote(v)}" for v in values or []]
    for name, value in (("--seeds", seeds), ("--scale", scale), ("--out", out)):
        if value is not None:
            parts.append(f"{name} {shlex.quote(str(value))}")
    return (" " + " ".join(parts)) if parts else ""
