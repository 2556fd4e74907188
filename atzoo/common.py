"""The ground floor: small helpers every layer may use (it imports nothing of atzoo but errors).

* Atomic files: :func:`atomic_write_bytes` / ``_text`` / ``_json`` -- temporary file in the
  same folder, fsync, ``os.replace``, then the folder is fsync'ed. The file is created
  with mode ``0o666`` filtered by the umask (``0644`` under umask 022), as ``open`` does,
  not the ``0600`` of :func:`tempfile.mkstemp`: run directories, leaderboards and figures
  are meant to be read by others.
* :func:`flatten` -- nested dicts to ``a.b`` (or ``a/b``) keys.
* :func:`load_yaml` -- ``yaml.safe_load`` whose syntax error is one ``AtzooError`` line.
* :func:`compare_state_dicts` -- the missing, unexpected and mis-shaped tensors of a state dict.
* :data:`MAX_SEED` -- the largest seed (NumPy takes 32 bits).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atzoo.errors import AtzooError

#: Largest seed: NumPy's generator, which ``accelerate.utils.set_seed`` seeds too, takes 32 bits.
MAX_SEED = 2**32 - 1
#: Prefix of atzoo's temporary files (removed by a resumed run when a kill left one behind).
TMP_PREFIX = ".tmp-"


# --------------------------------------------------------------------------- atomic files


def fsync_dir(path: Path) -> None:
    """Flushes a directory entry (a rename or a new file) to disk where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replaces ``path`` with ``data`` atomically (temporary file, fsync, rename).

    The temporary file is opened with ``O_CREAT | O_EXCL`` and mode ``0o666``, so the
    result has the permissions of any newly created file under the process's umask.
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)  # a stale one from a killed process with our pid
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int = 2) -> None:
    """Writes ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


# --------------------------------------------------------------------------- small helpers


def flatten(values: Mapping[str, Any], prefix: str = "", *, sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values; ``sep`` joins the keys)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}{sep}", sep=sep))
        else:
            flat[name] = value
    return flat


def load_yaml(text: str, what: str, error: type[AtzooError] = AtzooError) -> Any:
    """``yaml.safe_load(text)``; a syntax error is ``error("<what> is not valid YAML: <first line>")``."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise error(f"{what} is not valid YAML: {first}") from None


@dataclass(frozen=True)
class StateMismatch:
    """Why a state dict does not load into a module: keys missing, unexpected, of another shape."""

    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]


def compare_state_dicts(expected: Mapping[str, Any], given: Mapping[str, Any]) -> StateMismatch | None:
    """None when ``given`` has exactly the names and shapes of ``expected`` (a module's state dict)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    return StateMismatch(missing, unexpected, wrong) if missing or unexpected or wrong else None
