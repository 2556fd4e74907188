"""``atzoo export RUN --format robustbench``: a run's model in another library's format."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def export_command(
    run: Path = typer.Argument(..., help="A run directory (or its model.safetensors)."),
    fmt: str = typer.Option("robustbench", "--format", help="robustbench: models/<dataset>/<Linf|L2>/NAME.pt + NAME.py."),
    out: Path = typer.Option(Path("export"), "--out", "-o", help="Folder to write into (existing files are kept)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (default: the run directory's name)."),
) -> None:
    """Export a trained model: checkpoint + model definition (inputs in [0, 1])."""
    from atzoo.report.export import check_format, export_robustbench

    check_format(fmt)
    files = export_robustbench(run, out, name)
    console = Console()
    for role, path in files.items():
        console.print(f"wrote {role}: {path}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
