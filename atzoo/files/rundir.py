"""Reading a run directory: what the layers above the engine may know of one.

A run directory is written by :mod:`atzoo.engine` (``config.yaml``, ``metrics.jsonl``,
``checkpoints/``, ``model.safetensors``, ``eval.json``). Everything that only *reads* runs
(``atzoo compare``, ``reproduce``, the training curves) goes through these functions, so
the readers never import the engine's internals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: ``config.yaml`` plus one of these marks a directory as an atzoo run: ``--force`` only
#: deletes such directories, never an arbitrary folder given by mistake.
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "model.safetensors", "eval.json")


def looks_like_run(path: Path) -> bool:
    """Whether ``path`` holds an atzoo run (its config and some of its output)."""
    return (path / "config.yaml").is_file() and any((path / m).exists() for m in RUN_MARKERS)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a ``metrics.jsonl`` file (or of ``<run dir>/metrics.jsonl``).

    Read by the one bounded JSONL reader (:func:`atzoo.files.safe_read.read_jsonl_file`): a torn
    last line (the process was killed while appending it; ``--resume`` cuts it) is left
    out; any other line that is not a JSON object is an AtzooError naming the file and line.
    """
    from atzoo.files.safe_read import MAX_METRICS_BYTES, read_jsonl_file

    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return read_jsonl_file(path, "metrics log", limit=MAX_METRICS_BYTES)
