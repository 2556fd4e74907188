"""Bounded readers for every YAML and JSON file atzoo reads (recipes, overrides, a run's
``config.yaml``, ``eval.json``, ``model_meta.json``, the AutoAttack state, zoo cards).

A file is read only up to :data:`MAX_FILE_BYTES`; YAML is parsed by :class:`BoundedLoader`,
PyYAML's safe loader (plain data only, no tags that build objects) without anchors and
aliases (a 1 KB "billion laughs" file would otherwise expand into gigabytes) and with a
nesting limit (deep ``[[[[...`` would exhaust the parser's recursion). Problems are
:class:`~atzoo.errors.ConfigError` or the caller's error class, one line naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from atzoo.errors import AtzooError, ConfigError

#: The largest YAML or JSON file atzoo reads (a recipe is ~1 KB, an eval.json a few KB).
MAX_FILE_BYTES = int(os.environ.get("ATZOO_MAX_FILE_BYTES", 4 << 20))
#: The deepest nesting of YAML collections (a config has two levels).
MAX_DEPTH = 32


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors, aliases and deep nesting.

    Both checks happen while composing, before any node is expanded, so a hostile file
    fails in microseconds.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "YAML anchors and aliases (&name, *name) are not accepted", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.constructor.ConstructorError(
                    None, None, f"nesting deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str, source: str, *, error: type[AtzooError] = ConfigError) -> Any:
    """Parses YAML ``text`` with :class:`BoundedLoader`.

    Raises:
        ``error``: the text is too large or not valid (bounded) YAML; names ``source``.
    """
    if len(text) > MAX_FILE_BYTES:
        raise error(f"{source} is larger than {MAX_FILE_BYTES} bytes; not a config")
    try:
        return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - BoundedLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise error(f"{source} is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise error(f"{source} is not valid YAML: nested too deeply") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem:
        return f"{problem}" + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


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
    return load_yaml(read_text(path, what, error=error), f"{what} {path}", error=error)


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
