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
    ablation label can neither leave the panel nor run into the next one.
    """
    handles: list[tuple[object, str]] = []
    for key, entry in point_keys(group):
        x, y = entry.clean.mean, entry.robust.mean  # type: ignore[union-attr]
        text = textwrap.fill(f"{key}  {entry.label}", LABEL_WIDTH, subsequent_indent="     ")
        if entry.kind == "paper":
            handle = ax.plot(x, y, marker="*", markersize=12, markerfacecolor="none", markeredgecolor="C3",
                             linestyle="none", zorder=3)[0]
        else:
            color = f"C{(int(key) - 1) % 10}"
            fill = color if entry.robust_metric == "autoattack" else "none"
            handle = ax.errorbar(x, y, xerr=entry.clean.std, yerr=entry.robust.std,  # type: ignore[union-attr]
                                 fmt="o", color=color, markerfacecolor=fill, markersize=7, capsize=3, zorder=3)
        handles.append((handle, text))
        ax.annotate(key, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8, clip_on=True,
                    color="C3" if entry.kind == "paper" else "black")
    front = pareto_front(group.measured)
    if front:
        line = ax.plot([e.clean.mean for e in front], [e.robust.mean for e in front],  # type: ignore[union-attr]
                       "--", color="0.5", alpha=0.8, zorder=2)[0]
        handles.append((line, "Pareto front (measured)"))
    ax.set_title(textwrap.fill(group.title, TITLE_WIDTH), fontsize=9)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%)")
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    if handles:
        ax.legend([h for h, _ in handles], [t for _, t in handles], fontsize=7, loc="upper left",
                  bbox_to_anchor=(0.0, -0.16), frameon=False, borderaxespad=0.0)


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
    fig.suptitle(title or "Robustness-accuracy trade-off (robust = AutoAttack; hollow circle = PGD-20, no AutoAttack; "
                 "star = paper)", fontsize=10)
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


def curves_figure(board: Leaderboard) -> Figure | None:
    """Training loss against optimizer step, one panel per group, one line per measured
    entry (its first seed); ``None`` when no run has a training log."""
    curves = [[(key, entry, loss_curve(entry.runs[0].path)) for key, entry in point_keys(g)
               if entry.kind == "measured" and entry.runs] for g in board.groups]
    curves = [[c for c in group if c[2][0]] for group in curves]
    shown = [(g, c) for g, c in zip(board.groups, curves) if c]
    if not shown:
        return None
    cols = min(len(shown), 3)
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(5.8 * cols, 4.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (group, lines) in zip(axes.flat, shown):
        for key, entry, (steps, losses) in lines:
            ax.plot(steps, losses, marker=".", color=f"C{(int(key) - 1) % 10}", label=f"{key}  {textwrap.shorten(entry.label, 40)}")
        ax.set_title(textwrap.fill(group.title, TITLE_WIDTH), fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_axis_off()
    fig.suptitle("Training loss (numbers as in the trade-off plot)", fontsize=10)
    return fig
