"""The ground floor: small helpers every layer may use (it imports nothing of atzoo but errors).

* Atomic files: :func:`atomic_write_bytes` / ``_text`` / ``_json`` -- temporary file in the
  same folder, fsync, ``os.replace``, then the folder is fsync'ed. The file is created
  with mode ``0o666`` filtered by the umask (``0644`` under umask 022), as ``open`` does,
  not the ``0600`` of :func:`tempfile.mkstemp`: run directories, leaderboards and figures
  are meant to be read by others.
* :func:`flatten` -- nested dicts to ``a.b`` (or ``a/b``) keys.
* :func:`load_yaml` -- the one YAML parser: safe, no anchors/aliases, depth and size limits;
  a problem is one ``AtzooError`` line (files are read by :mod:`atzoo.files.safe_read`).
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


#: The deepest nesting of YAML collections :func:`load_yaml` accepts (a config has two levels).
MAX_YAML_DEPTH = 32
#: The largest YAML text :func:`load_yaml` parses (a recipe is ~1 KB).
MAX_YAML_CHARS = int(os.environ.get("ATZOO_MAX_FILE_BYTES", 4 << 20))


def load_yaml(text: str, what: str, error: type[AtzooError] = AtzooError) -> Any:
    """The one YAML parser of atzoo: PyYAML's safe loader (plain data, no tag builds an
    object) without anchors and aliases, at most :data:`MAX_YAML_DEPTH` levels deep and
    :data:`MAX_YAML_CHARS` long.

    A 1 KB "billion laughs" file (aliases of aliases) would otherwise expand into billions
    of nodes wherever a value is walked or printed; deep ``[[[[...`` would exhaust the
    parser's recursion. Both are refused while composing, before anything is expanded.

    Raises:
        ``error``: ``"<what> is not valid YAML: <problem> (line L, column C)"``, or too large.
    """
    import yaml

    if len(text) > MAX_YAML_CHARS:
        raise error(f"{what} is larger than {MAX_YAML_CHARS} characters; not a config")
    try:
        return yaml.load(text, Loader=_bounded_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise error(f"{what} is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise error(f"{what} is not valid YAML: nested too deeply") from None


def _yaml_problem(exc: Exception) -> str:
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem:
        return f"{problem}" + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_LOADER: Any = None


def _bounded_loader() -> Any:
    """``yaml.SafeLoader`` refusing anchors, aliases and deep nesting (built once, lazily:
    importing yaml is left to the first YAML read)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self.depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "YAML anchors and aliases (&name, *name) are not accepted", event.start_mark)
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"nesting deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    _LOADER = BoundedLoader
    return _LOADER


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
