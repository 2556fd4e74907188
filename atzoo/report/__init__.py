"""``atzoo compare``: leaderboards, a standalone HTML page and the trade-off plot.

    board = build_leaderboard(load_runs(["runs/at-s0", "runs/at-s1", "runs/arat-s0"]), paper=True)
    written = write_outputs(board, "leaderboard")   # md, csv, json, html, png

See :mod:`atzoo.report.leaderboard` for the grouping, seed and ranking rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from atzoo.files.common import atomic_write_bytes, atomic_write_text
from atzoo.errors import AtzooError
from atzoo.files.paths import check_output_path
from atzoo.report.html import to_html
from atzoo.report.leaderboard import Entry, Group, Leaderboard, Stat, build_leaderboard, format_eps
from atzoo.report.render import rich_leaderboard, to_csv, to_json, to_markdown
from atzoo.report.runs import RunRecord, collect_runs, load_run, load_runs

__all__ = [
    "DEFAULT_OUT", "OUTPUT_FILES", "Entry", "Group", "Leaderboard", "RunRecord", "Stat", "build_leaderboard",
    "collect_runs", "compare", "format_eps", "load_run", "load_runs", "prepare_out_dir", "rich_leaderboard", "write_outputs",
]

#: Where ``atzoo compare`` writes when ``--out`` is not given (relative to the cwd).
DEFAULT_OUT = "leaderboard"

#: The files compare writes; nothing else in the output folder is touched.
OUTPUT_FILES: tuple[str, ...] = (
    "leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.html", "tradeoff.png",
)


def prepare_out_dir(out: str | Path) -> Path:
    """Creates the output folder if needed.

    Raises:
        AtzooError: ``out`` exists but is not a folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AtzooError(f"--out {out} exists and is not a folder; choose a folder for the leaderboard files")
    out.mkdir(parents=True, exist_ok=True)
    return out


def page_figures(board: Leaderboard) -> dict[str, bytes]:
    """The page's figures, one trade-off plot and one set of training curves per group
    (each readable at its natural size in an 800 px window; tradeoff.png has them all)."""
    from dataclasses import replace

    from atzoo.report.plot import curves_figure, png_bytes, tradeoff_figure

    figures: dict[str, bytes] = {}
    several = len(board.groups) > 1
    for group in board.groups or [None]:
        one = replace(board, groups=[group]) if group is not None else board
        suffix = f": {group.title}" if several and group is not None else ""
        figures[f"Robustness-accuracy trade-off{suffix}"] = png_bytes(tradeoff_figure(one))
    for group in board.groups:
        curves = curves_figure(replace(board, groups=[group]))
        if curves is not None:
            figures[f"Training curves{': ' + group.title if several else ''}"] = png_bytes(curves)
    return figures


def write_outputs(board: Leaderboard, out: str | Path) -> dict[str, Path]:
    """Writes :data:`OUTPUT_FILES` into ``out`` (overwriting only those files).

    The HTML page embeds the trade-off plot and, where the runs have training logs, the
    training curves (as PNG data, so the page stays one self-contained file).
    """
    folder = prepare_out_dir(out)
    from atzoo.report.plot import png_bytes, tradeoff_figure  # matplotlib: only when plotting

    tradeoff = png_bytes(tradeoff_figure(board))
    figures = page_figures(board)
    texts = {
        "leaderboard.md": to_markdown(board), "leaderboard.csv": to_csv(board),
        "leaderboard.json": to_json(board), "leaderboard.html": to_html(board, figures=figures, out_dir=folder),
    }
    written: dict[str, Path] = {}
    for name, text in texts.items():
        atomic_write_text(folder / name, text)
        written[name] = folder / name
    atomic_write_bytes(folder / "tradeoff.png", tradeoff)
    written["tradeoff.png"] = folder / "tradeoff.png"
    return written


def compare(
    run_dirs: Sequence[str | Path], *, out: str | Path | None = DEFAULT_OUT, paper: bool = False,
    cards_dir: str | Path | None = None,
) -> tuple[Leaderboard, dict[str, Path]]:
    """Reads run directories, builds the leaderboard and writes its files.

    Every input is read and checked before anything is written, so bad input leaves
    the output folder as it was.

    Args:
        run_dirs: run directories, or folders searched for them; runs without an
            ``eval.json`` are left out and listed in ``board.skipped``.
        out: output folder (created if missing); ``None`` writes nothing.
        paper: add the zoo cards' reported numbers as reference rows.
        cards_dir: folder of zoo cards (default: the repository's ``zoo_cards/``).

    Returns:
        The leaderboard and the paths written (file name -> path).
    """
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise AtzooError(f"--out {out} exists and is not a folder; choose a folder for the leaderboard files")
    if out is not None:
        check_output_path(out, "--out", directory=True)
    runs, skipped = collect_runs(list(run_dirs))
    board = build_leaderboard(runs, paper=paper, cards_dir=cards_dir)
    board.skipped = skipped
    written = write_outputs(board, out) if out is not None else {}
    return board, written
