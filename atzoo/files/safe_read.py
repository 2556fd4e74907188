"""Bounded readers for every file atzoo reads that someone else may have written: a run's
``config.yaml`` and recipes (YAML), ``eval.json``, ``model_meta.json``, the AutoAttack
state (JSON), and torch pickles (``method.pretrained``, ``method.teacher_checkpoint``,
the optimizer state of a checkpoint).

A file is read only up to :data:`MAX_FILE_BYTES`; YAML is parsed by
:func:`atzoo.files.common.load_yaml` (no anchors or aliases, depth limit); pickles only with
``torch.load(weights_only=True)``. Problems are one line naming the file, raised as the
caller's error class. Ground floor: imports only ``atzoo.errors`` and ``atzoo.files.common``.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

from atzoo.files.common import MAX_YAML_CHARS, load_yaml
from atzoo.errors import AtzooError, CheckpointError, ConfigError

#: The largest YAML or JSON file atzoo reads (a recipe is ~1 KB, an eval.json a few KB).
MAX_FILE_BYTES = MAX_YAML_CHARS


def read_text(path: str | Path, what: str, *, error: type[AtzooError] = ConfigError,
              limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of ``path``, read only up to ``limit`` bytes.

    Raises:
        ``error``: the file is missing, unreadable, larger than ``limit`` or not UTF-8.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{what} {path} is larger than {limit} bytes; not an atzoo file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path} is not a UTF-8 text file, so not an atzoo {what}") from None


def read_yaml_file(path: str | Path, what: str, *, error: type[AtzooError] = ConfigError) -> Any:
    """:func:`read_text` then :func:`load_yaml` (``what`` names the file's role: recipe, config)."""
    return load_yaml(read_text(path, what, error=error), f"{what} {path}", error)


def read_json_file(path: str | Path, what: str, *, error: type[AtzooError] = AtzooError) -> Any:
    """A JSON file of at most :data:`MAX_FILE_BYTES`.

    Raises:
        ``error``: the file is unreadable, too large, not UTF-8 or not valid JSON.
    """
    text = read_text(path, what, error=error)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if isinstance(exc, ValueError) else "nested too deeply"
        raise error(f"{what} {path} is not valid JSON ({reason})") from None


def safe_torch_load(file: Path, what: str) -> Any:
    """The one place atzoo reads a torch pickle: ``weights_only=True``, and an error that
    names what the file asked for, never torch's advice to switch the safety off.

    Raises:
        CheckpointError: ``refusing to load <what> <file>: ...`` for a pickle that would
            build objects (run code), ``<what> <file> cannot be read`` for anything else.
    """
    import torch

    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        wanted = re.search(r"GLOBAL ([\w.]+)", str(exc))
        detail = f"it asks to build '{wanted.group(1)}'" if wanted else "it is not a torch file of plain tensors"
        raise CheckpointError(f"refusing to load {what} {file}: {detail}; atzoo loads only tensors and "
                              "plain containers from a pickle") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError, IndexError) as exc:
        raise CheckpointError(f"{what} {file} cannot be read ({type(exc).__name__})") from None
