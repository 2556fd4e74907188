"""Shared by the benchmark scripts: run an ``atzoo bench`` command, saving JSON by default."""

from __future__ import annotations

from pathlib import Path

from atzoo.cli import run

RESULTS = Path(__file__).resolve().parent / "results"


def option(argv: list[str], name: str, default: str) -> str:
    """The value given to ``name`` (``--name value`` or ``--name=value``), else ``default``."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def run_bench(command: str, stem: str, argv: list[str]) -> int:
    """``atzoo bench COMMAND ARGV``; without ``--json``, writes ``results/<stem>_<device>.json``."""
    if option(argv, "--json", "") == "":
        argv = [*argv, "--json", str(RESULTS / f"{stem}_{option(argv, '--device', 'cpu')}.json")]
    return run(["bench", command, *argv])
