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


def write_outputs(board: Leaderboard, out: str | Path) -> dict[str, Path]:
    """Writes :data:`OUTPUT_FILES` into ``out`` (overwriting only those files).

    The HTML page embeds the trade-off plot and, where the runs have training logs, the
    training curves (as PNG data, so the page stays one self-contained file).
    """
    folder = prepare_out_dir(out)
    from atzoo.report.plot import curves_figure, png_bytes, tradeoff_figure  # matplotlib: only when plotting

    tradeoff = png_bytes(tradeoff_figure(board))
    curves = curves_figure(board)
    figures = {"Robustness-accuracy trade-off": tradeoff}
    if curves is not None:
        figures["Training curves"] = png_bytes(curves)
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
