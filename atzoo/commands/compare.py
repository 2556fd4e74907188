"""``atzoo compare RUN_DIR... [--out DIR] [--paper]``: leaderboards from run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text

from atzoo.report import DEFAULT_OUT, OUTPUT_FILES, compare, rich_leaderboard


def compare_command(
    run_dirs: Optional[list[Path]] = typer.Argument(
        None, help="Run directories written by 'atzoo train', or folders holding them (searched recursively); "
                   "runs without eval.json are skipped with a warning.", show_default=False
    ),
    out: Path = typer.Option(
        Path(DEFAULT_OUT), "--out", "-o",
        help=f"Folder for {', '.join(OUTPUT_FILES)} (created if missing; only these files are overwritten).",
    ),
    paper: bool = typer.Option(
        False, "--paper", help="Add the papers' reported numbers (from zoo_cards/) as marked reference rows."
    ),
    curves: bool = typer.Option(
        False, "--curves", help="Also write curves.png: loss, train/validation accuracy and lr per epoch of every run."
    ),
) -> None:
    """Rank runs by clean + AutoAttack accuracy, one table per dataset/model/threat model.

    Seeds of one configuration are aggregated (mean ± std); training cost is seconds per
    epoch and the ratio to AT. Writes a Markdown/CSV/JSON leaderboard, a sortable HTML
    page and the clean-vs-robust trade-off plot.
    """
    board, written = compare(list(run_dirs or []), out=out, paper=paper)
    if curves:
        from atzoo.engine.curves import write_compare_curves

        written["curves.png"] = write_compare_curves(list(run_dirs or []), out)
    console = Console()
    if board.skipped:
        names = ", ".join(str(p) for p in board.skipped[:3]) + (", ..." if len(board.skipped) > 3 else "")
        message = f" skipped {len(board.skipped)} run(s) without eval.json ({names}); evaluate with 'atzoo eval RUN_DIR'"
        Console(stderr=True).print(Text.assemble(("warning:", "bold yellow"), message), soft_wrap=True)
    console.print(rich_leaderboard(board))
    console.print(f"wrote {', '.join(written)} to {out}/")
    console.print(f"open {written['leaderboard.html']} in a browser; plot: {written['tradeoff.png']}")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
