"""Whether a path can be written, decided before any work starts (``--out``, ``--json``).

One check for every output path of the CLI: the path, resolved (symbolic links and
``..`` followed), must be of the expected kind where it exists, and its nearest existing
ancestor must be a writable directory (never a file: ``notes/thesis.tex/board``).
"""

from __future__ import annotations

import os
from pathlib import Path

from atzoo.errors import AtzooError


def check_output_path(path: str | Path, what: str, *, directory: bool) -> None:
    """Raises AtzooError (one line naming ``what`` and ``path``) when ``path`` cannot be
    written as a directory (``directory=True``) or as a file."""
    real = Path(os.path.realpath(path))
    if real.exists() and real.is_dir() != directory:
        kind = "is a file" if directory else "is a directory"
        raise AtzooError(f"{what} {path} {kind}; give a {'folder' if directory else 'file name'}")
    ancestor = real if directory and real.exists() else real.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise AtzooError(f"cannot write {what} {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise AtzooError(f"cannot write {what} {path}: {ancestor} is not writable")
