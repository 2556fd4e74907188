"""Whether a path can be written, decided before any work starts (``--out``, ``--json``),
and the checks of every file atzoo writes under a folder the user chose: inside it
(:func:`check_inside`), named by one plain name (:func:`check_path_part`), never over an
existing file without ``--force`` (:func:`check_new_file`).

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


def check_new_file(path: str | Path, what: str, *, force: bool) -> None:
    """Refuses to replace an existing file unless ``force`` (then it is replaced atomically,
    a link by a file, never written through).

    Raises:
        AtzooError: ``"<what> <path> exists; ..."`` (the path is left untouched).
    """
    check_output_path(path, what, directory=False)
    if os.path.lexists(path) and not force:
        raise AtzooError(f"{what} {path} exists; give another file name, or --force to replace it")


def check_path_part(text: str, what: str) -> str:
    """``text`` when it is one plain folder or file name (no ``/``, ``\\``, ``..``, ``.``,
    empty, NUL), the only kind of name atzoo joins under a folder the user chose.

    Raises:
        AtzooError: naming ``what`` and the text.
    """
    if not isinstance(text, str) or text in ("", ".", "..") or any(c in text for c in "/\\\0") \
            or len(text) > 255:
        raise AtzooError(f"{what} {str(text)[:80]!r} must be one plain folder name (no '/', '\\\\' or '..')")
    return text


def check_inside(folder: str | Path, path: str | Path, what: str) -> Path:
    """``path`` when, resolved (links and ``..`` followed), it lies inside ``folder``.

    The last check before atzoo writes a file under a folder the user chose: a name taken
    from a file (a manifest's row id, a run's ``model_meta.json``) can never place it elsewhere.

    Raises:
        AtzooError: ``path`` resolves outside ``folder``.
    """
    root = Path(os.path.realpath(folder))
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise AtzooError(f"{what} {path} would be written outside {folder} (it resolves to {real})")
    return Path(path)
