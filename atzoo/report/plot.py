"""``tradeoff.png``: clean vs robust accuracy, one panel per leaderboard group.

Measured entries are filled circles with seed standard deviations as error bars; the
Pareto front of the measured entries (no other entry is better in both accuracies) is
drawn as a line; paper reference points are hollow stars. Robust accuracy is
AutoAttack, or PGD-20 (hollow circle) where AutoAttack was not run.

Uses matplotlib's object API with the Agg canvas, so it never touches the global
pyplot state or needs a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from atzoo.report.leaderboard import Entry, Group, Leaderboard


def pareto_front(entries: list[Entry]) -> list[Entry]:
    """The Pareto-optimal measured entries, by increasing clean accuracy."""
    return sorted((e for e in entries if e.pareto and e.kind == "measured"), key=lambda e: e.clean.mean)  # type: ignore[union-attr]


def _draw_group(ax: Axes, group: Group) -> None:
    for entry in group.measured:
        if entry.clean is None or entry.robust is None:
            continue
        fill = "C0" if entry.robust_metric == "autoattack" else "none"
        ax.errorbar(
            entry.clean.mean, entry.robust.mean, xerr=entry.clean.std, yerr=entry.robust.std,
            fmt="o", color="C0", markerfacecolor=fill, markersize=7, capsize=3, zorder=3,
        )
        ax.annotate(entry.label, (entry.clean.mean, entry.robust.mean), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    front = pareto_front(group.measured)
    if front:
        ax.plot([e.clean.mean for e in front], [e.robust.mean for e in front],  # type: ignore[union-attr]
                "--", color="C2", marker="o", markersize=13, markerfacecolor="none", alpha=0.8, zorder=2,
                label="Pareto front (measured)")
    for entry in group.paper:
        if entry.clean is None or entry.robust is None:
            continue
        ax.plot(entry.clean.mean, entry.robust.mean, marker="*", markersize=12, markerfacecolor="none",
                markeredgecolor="C3", linestyle="none", zorder=3)
        ax.annotate(entry.label, (entry.clean.mean, entry.robust.mean), textcoords="offset points",
                    xytext=(6, -10), fontsize=7, color="C3")
    _legend(ax, group)
    ax.set_title(group.title, fontsize=9)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%): AutoAttack, PGD-20 if hollow")
    ax.grid(alpha=0.3)
    ax.margins(0.15)


def _legend(ax: Axes, group: Group) -> None:
    ax.plot([], [], "o", color="C0", label="measured (AutoAttack)")
    if any(e.robust_metric == "pgd20" for e in group.measured):
        ax.plot([], [], "o", color="C0", markerfacecolor="none", label="measured (PGD-20, no AA)")
    if group.paper:
        ax.plot([], [], "*", markersize=10, markerfacecolor="none", markeredgecolor="C3", label="paper (reported)")
    ax.legend(fontsize=7, loc="best")


def plot_tradeoff(
    board: Leaderboard, path: str | Path | BinaryIO, *, title: str = "Robustness-accuracy trade-off"
) -> str | Path | BinaryIO:
    """Writes the trade-off figure to ``path`` (PNG; a file name or a binary stream) and returns it.

    ``title`` heads the figure (``atzoo reproduce`` names the table and its scale there).
    """
    n = max(len(board.groups), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.5 * cols, 4.5 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index < len(board.groups):
            _draw_group(ax, board.groups[index])
        else:
            ax.set_axis_off()
    fig.suptitle(title, fontsize=10 if len(title) > 60 else None)
    fig.savefig(path, format="png", dpi=120)
    return Path(path) if isinstance(path, str) else path
