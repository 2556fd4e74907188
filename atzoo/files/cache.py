"""A small JSON key-value cache under ``$ATZOO_CACHE`` (dataset fingerprints, pass counts).

A cache is only a speed-up: a missing or damaged file reads as empty, and a folder that
cannot be written (a read-only home) means no cache, never an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atzoo.errors import AtzooError
from atzoo.files.common import atomic_write_json
from atzoo.files.safe_read import read_json_file


def read_json_cache(path: Path, what: str) -> dict[str, Any]:
    """The cached entries of ``path`` ({} when absent or damaged: the caller recomputes)."""
    if not path.is_file():
        return {}
    try:
        values = read_json_file(path, what)
    except AtzooError:
        return {}
    return values if isinstance(values, dict) else {}


def add_to_json_cache(path: Path, what: str, key: str, value: Any) -> None:
    """Adds one entry (atomic replace); an unwritable folder leaves the cache as it was."""
    values = read_json_cache(path, what)
    values[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, values)
    except OSError:
        pass
