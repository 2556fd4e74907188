"""``tradeoff.png``: clean vs robust accuracy, one panel per leaderboard group.

Measured entries are filled circles with seed standard deviations as error bars, numbered
by rank; the Pareto front of the measured entries (no other entry is better in both
accuracies) is drawn as a line; paper reference points are hollow stars (``P1``, ...).
Robust accuracy is AutoAttack, or PGD-20 (hollow circle) where AutoAttack was not run.
The legend under each panel names every numbered point, with long labels wrapped.

Uses matplotlib's object API with the Agg canvas, so it never touches the global
pyplot state or needs a display.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import BinaryIO

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from atzoo.report.leaderboard import Entry, Group, Leaderboard
from atzoo.files.text import fit_title


def pareto_front(entries: list[Entry]) -> list[Entry]:
    """The Pareto-optimal measured entries, by increasing clean accuracy."""
    return sorted((e for e in entries if e.pareto and e.kind == "measured"), key=lambda e: e.clean.mean)  # type: ignore[union-attr]


#: Characters per line of a panel title and of a legend entry (long ablation labels wrap).
TITLE_WIDTH = 48
LABEL_WIDTH = 52


def point_keys(group: Group) -> list[tuple[str, Entry]]:
    """Short keys drawn beside the points: ``1, 2, ...`` (measured, by rank), ``P1, ...`` (paper)."""
    plotted = [e for e in group.entries if e.clean is not None and e.robust is not None]
    measured = [e for e in plotted if e.kind == "measured"]
    paper = [e for e in plotted if e.kind == "paper"]
    return [(str(i), e) for i, e in enumerate(measured, 1)] + [(f"P{i}", e) for i, e in enumerate(paper, 1)]


def _draw_group(ax: Axes, group: Group) -> None:
    """One panel: numbered points, the Pareto front, and a legend below naming every point.

    Labels live in the legend under the panel rather than beside the points, so a long
    ablation label can neither leave the panel nor run into the next one. The axes stay
    within 0-100 % (:func:`percent_limits`); the keys beside the points are placed so that
    they do not cover each other (:func:`place_keys`).
    """
    handles: list[tuple[object, str]] = []
    points: list[tuple[str, Entry, float, float]] = []
    for key, entry in point_keys(group):
        x, y = entry.clean.mean, entry.robust.mean  # type: ignore[union-attr]
        text = textwrap.fill(f"{key}  {entry.label}", LABEL_WIDTH, subsequent_indent="     ")
        if entry.kind == "paper":
            handle = ax.plot(x, y, marker="*", markersize=12, markerfacecolor="none", markeredgecolor="C3",
                             linestyle="none", zorder=3, clip_on=False)[0]
        else:
            color = f"C{(int(key) - 1) % 10}"
            fill = color if entry.robust_metric == "autoattack" else "none"
            handle = ax.errorbar(x, y, xerr=entry.clean.std, yerr=entry.robust.std,  # type: ignore[union-attr]
                                 fmt="o", color=color, markerfacecolor=fill, markersize=7, capsize=3, zorder=3)
            for artist in handle.get_children():
                artist.set_clip_on(False)  # a point at 100 % sits on the axis, whole
        handles.append((handle, text))
        points.append((key, entry, x, y))
    front = pareto_front(group.measured)
    if front:
        line = ax.plot([e.clean.mean for e in front], [e.robust.mean for e in front],  # type: ignore[union-attr]
                       "--", color="0.5", alpha=0.8, zorder=2)[0]
        handles.append((line, "Pareto front (measured)"))
    ax.set_title(textwrap.fill(group.title, TITLE_WIDTH), fontsize=9)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%)")
    ax.grid(alpha=0.3)
    entries = [e for _, e, _, _ in points]
    ax.set_xlim(*percent_limits([v for e in entries for v in _span(e.clean)]))
    ax.set_ylim(*percent_limits([v for e in entries for v in _span(e.robust)]))
    for (key, entry, x, y), offset in zip(points, place_keys(ax, [(k, x, y) for k, _, x, y in points])):
        ax.annotate(key, (x, y), textcoords="offset points", xytext=offset, fontsize=8,
                    color="C3" if entry.kind == "paper" else "black")
    if handles:
        ax.legend([h for h, _ in handles], [t for _, t in handles], fontsize=7, loc="upper left",
                  bbox_to_anchor=(0.0, -0.16), frameon=False, borderaxespad=0.0)


def _span(stat: object) -> list[float]:
    """The values a point with error bars covers: mean - std .. mean + std."""
    mean, std = getattr(stat, "mean", None), getattr(stat, "std", None) or 0.0
    return [] if mean is None else [mean - std, mean + std]


def percent_limits(values: list[float], margin: float = 0.12, least: float = 2.0) -> tuple[float, float]:
    """Axis limits around ``values`` (percentages) that never leave 0-100: a margin of
    ``margin`` of the range (at least ``least`` points) on each side, cut at 0 and 100.
    Accuracies outside [0, 100] do not exist; an axis from 94 to 106 or down to -5 (error
    bars, margins) suggests they do."""
    if not values:
        return 0.0, 100.0
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * margin, least)
    return max(0.0, lo - pad), min(100.0, hi + pad)


#: Where a point's key may go, in points from the point: right-up first, then around it.
KEY_OFFSETS: tuple[tuple[int, int], ...] = ((5, 4), (5, -11), (-12, 4), (-12, -11), (5, 12), (-12, 12),
                                            (5, -19), (-12, -19))


def place_keys(ax: Axes, points: list[tuple[str, float, float]]) -> list[tuple[int, int]]:
    """An offset for each point's key such that keys do not overlap each other (greedy, in
    drawing order; the least-overlapping offset when every one collides)."""
    to_display = ax.transData.transform
    scale = ax.figure.dpi / 72.0  # points -> pixels
    placed: list[tuple[float, float, float, float]] = []
    offsets = []
    markers = [tuple(to_display((x, y))) for _, x, y in points]
    for key, x, y in points:
        px, py = to_display((x, y))
        width, height = (5.2 * len(key) + 2) * scale, 9 * scale

        def box(offset: tuple[int, int]) -> tuple[float, float, float, float]:
            left, bottom = px + offset[0] * scale, py + offset[1] * scale
            return left, bottom, left + width, bottom + height

        def overlap(b: tuple[float, float, float, float]) -> float:
            area = sum(max(0.0, min(b[2], o[2]) - max(b[0], o[0])) * max(0.0, min(b[3], o[3]) - max(b[1], o[1]))
                       for o in placed)
            marker = 4 * scale  # other points' markers count too
            area += sum(max(0.0, min(b[2], mx + marker) - max(b[0], mx - marker))
                        * max(0.0, min(b[3], my + marker) - max(b[1], my - marker))
                        for mx, my in markers if (mx, my) != (px, py))
            return area

        best = min(KEY_OFFSETS, key=lambda o: (overlap(box(o)), KEY_OFFSETS.index(o)))
        placed.append(box(best))
        offsets.append(best)
    return offsets


def _legend_lines(group: Group) -> int:
    """Lines the legend under a panel takes (for the figure height)."""
    lines = sum(len(textwrap.wrap(f"{k}  {e.label}", LABEL_WIDTH)) for k, e in point_keys(group))
    return lines + (1 if pareto_front(group.measured) else 0)


def plot_tradeoff(board: Leaderboard, path: str | Path | BinaryIO, *, title: str | None = None) -> str | Path | BinaryIO:
    """Writes the trade-off figure to ``path`` (PNG; a file name or a binary stream) and returns it.

    ``title`` replaces the figure's heading (``atzoo reproduce`` names the table and its scale there).
    """
    tradeoff_figure(board, title=title).savefig(path, format="png", dpi=120)
    return Path(path) if isinstance(path, str) else path


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG data (120 dpi)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def tradeoff_figure(board: Leaderboard, *, title: str | None = None) -> Figure:
    """The trade-off figure: one panel per group, at most three panels per row (``title``: the heading)."""
    n = max(len(board.groups), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    legend = max((_legend_lines(g) for g in board.groups), default=0)
    fig = Figure(figsize=(5.8 * cols, (4.8 + 0.19 * legend) * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index < len(board.groups):
            _draw_group(ax, board.groups[index])
        else:
            ax.set_axis_off()
    heading = title or ("Robustness-accuracy trade-off (robust = AutoAttack; hollow circle = PGD-20, no AutoAttack; "
                        "star = paper)")
    fig.suptitle(fit_title(heading, 5.8 * cols), fontsize=10)
    return fig


def loss_curve(run_dir: Path) -> tuple[list[float], list[float]]:
    """(optimizer step, training loss) from a run's ``metrics.jsonl`` step rows (epoch rows
    where the log has no step rows); empty without a log."""
    from atzoo.files.rundir import read_metrics

    if not (Path(run_dir) / "metrics.jsonl").is_file():
        return [], []
    try:
        rows = read_metrics(run_dir)
    except (ValueError, OSError):  # a damaged log costs the curve, not the leaderboard
        return [], []
    numeric = [r for r in rows if isinstance(r.get("step"), (int, float)) and isinstance(r.get("loss"), (int, float))]
    chosen = [r for r in numeric if r.get("kind") == "step"] or [r for r in numeric if r.get("kind") == "epoch"]
    return [float(r["step"]) for r in chosen], [float(r["loss"]) for r in chosen]


#: Panels per row of the training-curve small multiples, and each panel's size in inches.
CURVE_COLUMNS = 3
CURVE_PANEL = (3.6, 2.5)


def curves_figure(board: Leaderboard) -> Figure | None:
    """Training loss against optimizer step: small multiples, one panel per measured entry
    (its first seed) with its own loss axis, grouped by leaderboard group; ``None`` when no
    run has a training log.

    One shared axis would flatten most methods: their losses are not on one scale (AR-AT's
    sum of CE and invariance terms sits near 12 where AT's CE is near 2), and the shape of
    each curve -- still falling, flat, diverging -- is what the panel is for.
    """
    curves = [[(key, entry, loss_curve(entry.runs[0].path)) for key, entry in point_keys(g)
               if entry.kind == "measured" and entry.runs] for g in board.groups]
    curves = [[c for c in group if c[2][0]] for group in curves]
    shown = [(g, c) for g, c in zip(board.groups, curves) if c]
    if not shown:
        return None
    cols = min(max(len(c) for _, c in shown), CURVE_COLUMNS)
    rows = [math.ceil(len(c) / cols) for _, c in shown]
    width, height = CURVE_PANEL
    fig = Figure(figsize=(width * cols, height * sum(rows) + 0.5 * len(shown) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    parts = fig.subfigures(len(shown), 1, height_ratios=[r * height + 0.5 for r in rows], squeeze=False)[:, 0]
    for part, (group, lines), nrows in zip(parts, shown, rows):
        part.suptitle(textwrap.fill(group.title, 90), fontsize=10)
        axes = part.subplots(nrows, cols, squeeze=False)
        for index, (ax, (key, entry, (steps, losses))) in enumerate(zip(axes.flat, lines)):
            ax.plot(steps, losses, color=f"C{(int(key) - 1) % 10}", linewidth=1.3)
            ax.set_title(f"{key}  {textwrap.shorten(entry.label, 38)}", fontsize=10, loc="left")
            ax.tick_params(labelsize=9)
            ax.grid(alpha=0.3)
            if index % cols == 0:
                ax.set_ylabel("training loss", fontsize=9)
            if index >= len(lines) - cols:
                ax.set_xlabel("optimizer step", fontsize=9)
        for ax in list(axes.flat)[len(lines):]:
            ax.set_axis_off()
    fig.suptitle(fit_title("Training loss, one panel per entry, each on its own scale (numbers as in the "
                           "trade-off plot)", width * cols, 11), fontsize=11)
    return fig
