"""Paper tables as data: the YAML manifests in ``atzoo/reproduce/tables/``.

One manifest per reproducible table. Its rows say which method and recipe produce a
paper number, with which seeds, how far the measurement may fall from the paper
(tolerance, in points), and where the number was published::

    name: ar-at-table3
    metrics: [clean, autoattack]
    seeds: [0, 1, 2, 3, 4]
    tolerance: {clean: 1.0, autoattack: 1.0}
    orderings:                       # checked on paper and measured numbers, per setting
      - {claim: "clean: arat > at", says: "AR-AT's clean accuracy is above AT's"}
    rows:
      - id: cifar10-resnet18/arat    # <setting>/<key>; the setting is <dataset>-<model>
        method: arat
        label: AR-AT
        recipe: arat_cifar10_resnet18.yaml    # relative to recipes/
        overrides: []                # section.key=value, applied after the recipe
        paper: {clean: 87.82, autoattack: 49.02}
        paper_runs: 5                # how many runs the paper averaged, where it says
        card: {name: arat}           # the zoo card holding the same number (tested)

Manifests are read with atzoo's one YAML parser (PyYAML's safe loader, bounded:
:func:`atzoo.files.safe_read.read_yaml_file`) and validated here; anything malformed is a
one-line :class:`~atzoo.errors.ConfigError`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atzoo.errors import ConfigError

#: The folder of the packaged manifests (shipped in the wheel as package data).
TABLES_DIR = Path(__file__).resolve().parent / "tables"

#: Metrics a row may state: accuracies (%), the ablation's gradient similarity, and costs.
METRICS: tuple[str, ...] = ("clean", "pgd20", "autoattack", "grad_sim", "cost_vs_at", "seconds_per_batch")

#: Metrics shown for information only: no verdict (hardware-dependent).
INFO_METRICS: frozenset[str] = frozenset({"seconds_per_batch"})

_CLAIM = re.compile(
    r"^\s*(?P<metric>\w+)\s*:\s*(?P<a>[\w.+-]+)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?:(?P<b>[A-Za-z_][\w.+-]*)(?:\s*(?P<sign>[+-])\s*(?P<margin>[0-9.]+))?|(?P<number>-?[0-9.]+))\s*$"
)


@dataclass(frozen=True)
class Claim:
    """An ordering the paper's numbers show, e.g. ``clean: arat > at`` or ``autoattack: standard < 5``.

    Attributes:
        metric: the metric compared.
        a: the row key on the left.
        op: ``>``, ``>=``, ``<`` or ``<=``.
        b: the row key on the right (``None`` when comparing with a number).
        offset: added to the right-hand side (``at - 2`` is ``b="at", offset=-2``; a number is ``offset``).
        text: the claim as written; says: what it means in words.
    """

    metric: str
    a: str
    op: str
    b: str | None
    offset: float
    text: str
    says: str = ""

    def holds(self, left: float, right: float | None) -> bool:
        """Whether ``left op right + offset`` (``right`` is ignored for a number claim)."""
        rhs = (right if right is not None else 0.0) + self.offset
        return {">": left > rhs, ">=": left >= rhs, "<": left < rhs, "<=": left <= rhs}[self.op]


def parse_claim(text: str, says: str = "", where: str = "manifest") -> Claim:
    """Parses ``metric: a OP b [+|- margin]`` or ``metric: a OP number``.

    Raises:
        ConfigError: the claim does not follow that grammar or names an unknown metric.
    """
    match = _CLAIM.match(text)
    if not match:
        raise ConfigError(f"{where}: ordering {text!r} must look like 'clean: arat > at' or 'autoattack: standard < 5'")
    metric = match["metric"]
    if metric not in METRICS:
        raise ConfigError(f"{where}: ordering {text!r} names metric '{metric}'; valid: {', '.join(METRICS)}")
    if match["number"] is not None:
        return Claim(metric, match["a"], match["op"], None, float(match["number"]), text.strip(), says)
    margin = float(match["margin"] or 0.0) * (-1.0 if match["sign"] == "-" else 1.0)
    return Claim(metric, match["a"], match["op"], match["b"], margin, text.strip(), says)


@dataclass(frozen=True)
class Row:
    """One row of a paper table.

    Attributes:
        id: ``<setting>/<key>``, unique in the table.
        method: the registry name trained (``atzoo train METHOD``).
        label: the paper's name of the row.
        recipe: recipe file, relative to the ``recipes/`` folder.
        overrides: ``section.key=value`` settings applied after the recipe.
        paper: the paper's numbers (metric -> value); empty when the paper has none.
        seeds: the seeds atzoo runs.
        tolerance: points (or units) the measured mean may differ from the paper.
        paper_runs: runs the paper averaged (``None`` where it does not say).
        card: ``{"name": card, "label": row label}`` of the zoo card with the same number.
        reference: a row that is not in the paper's table; it runs only when ``--rows`` names it.
        note: anything a reader must know about the row.
    """

    id: str
    method: str
    label: str
    recipe: str
    overrides: tuple[str, ...] = ()
    paper: dict[str, float] = field(default_factory=dict)
    seeds: tuple[int, ...] = ()
    tolerance: dict[str, float] = field(default_factory=dict)
    paper_runs: int | None = None
    card: dict[str, str] | None = None
    reference: bool = False
    note: str = ""

    @property
    def setting(self) -> str:
        """``<dataset>-<model>`` of the paper, e.g. ``cifar10-resnet18``."""
        return self.id.rsplit("/", 1)[0]

    @property
    def key(self) -> str:
        """The row's name inside its setting (``arat``, ``arat_swa``), used by orderings."""
        return self.id.rsplit("/", 1)[1]


@dataclass(frozen=True)
class Table:
    """A reproducible paper table: rows, the metrics compared and the orderings to check."""

    name: str
    title: str
    paper: str
    source: str
    metrics: tuple[str, ...]
    rows: tuple[Row, ...]
    orderings: tuple[Claim, ...] = ()
    notes: tuple[str, ...] = ()
    path: Path | None = None

    def row(self, row_id: str) -> Row:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise ConfigError(f"table {self.name} has no row '{row_id}'; rows: {', '.join(r.id for r in self.rows)}")

    @property
    def settings(self) -> list[str]:
        return list(dict.fromkeys(r.setting for r in self.rows))

    def select(self, patterns: list[str] | None = None) -> list[Row]:
        """The rows to run: every non-reference row, or those matching ``patterns``.

        A pattern is a row id or a shell glob over ids (``cifar10-resnet18/*``) or keys (``arat*``).

        Raises:
            ConfigError: a pattern matches no row.
        """
        if not patterns:
            return [r for r in self.rows if not r.reference]
        chosen: list[Row] = []
        for pattern in patterns:
            hits = [r for r in self.rows if fnmatch.fnmatchcase(r.id, pattern) or fnmatch.fnmatchcase(r.key, pattern)]
            if not hits:
                raise ConfigError(
                    f"--rows '{pattern}' matches no row of {self.name}; rows: {', '.join(r.id for r in self.rows)}"
                )
            chosen += [r for r in hits if r not in chosen]
        return [r for r in self.rows if r in chosen]


# --------------------------------------------------------------------------- loading


def _require(values: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = values.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: '{key}' must be a {names}, got {value!r}")
    return value


def _numbers(values: Any, where: str, key: str) -> dict[str, float]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: '{key}' must be a mapping of metric: number, got {values!r}")
    result: dict[str, float] = {}
    for metric, value in values.items():
        if metric not in METRICS:
            raise ConfigError(f"{where}: '{key}' names metric '{metric}'; valid: {', '.join(METRICS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}.{metric} must be a number, got {value!r}")
        result[metric] = float(value)
    return result


def _seeds(values: Any, where: str) -> tuple[int, ...]:
    if not isinstance(values, list) or not values or not all(isinstance(s, int) and not isinstance(s, bool)
                                                               and s >= 0 for s in values):
        raise ConfigError(f"{where}: 'seeds' must be a non-empty list of non-negative integers, got {values!r}")
    return tuple(values)


def parse_row(values: Any, table: dict[str, Any], where: str) -> Row:
    """One row, with the table's ``seeds`` and ``tolerance`` as defaults."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: each row must be a mapping, got {values!r}")
    known = {"id", "method", "label", "recipe", "overrides", "paper", "seeds", "tolerance", "paper_runs", "card",
             "reference", "note"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown row key '{unknown[0]}'; valid: {', '.join(sorted(known))}")
    row_id = _require(values, "id", str, where)
    where = f"{where} row {row_id}"
    if row_id.count("/") != 1:
        raise ConfigError(f"{where}: 'id' must be <setting>/<key>, e.g. cifar10-resnet18/arat")
    overrides = values.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ConfigError(f"{where}: 'overrides' must be a list of section.key=value strings")
    tolerance = {**_numbers(table.get("tolerance"), where, "tolerance"),
                 **_numbers(values.get("tolerance"), where, "tolerance")}
    card = values.get("card")
    if card is not None and not (isinstance(card, dict) and isinstance(card.get("name"), str)):
        raise ConfigError(f"{where}: 'card' must be a mapping with a 'name'")
    paper_runs = values.get("paper_runs")
    if paper_runs is not None and (isinstance(paper_runs, bool) or not isinstance(paper_runs, int)):
        raise ConfigError(f"{where}: 'paper_runs' must be an integer or null")
    return Row(
        id=row_id, method=_require(values, "method", str, where), label=str(values.get("label") or row_id),
        recipe=_require(values, "recipe", str, where), overrides=tuple(overrides),
        paper=_numbers(values.get("paper"), where, "paper"),
        seeds=_seeds(values.get("seeds", table.get("seeds")), where), tolerance=tolerance,
        paper_runs=paper_runs, card=dict(card) if card else None, reference=bool(values.get("reference", False)),
        note=str(values.get("note") or ""),
    )


def parse_table(values: Any, source: str) -> Table:
    """Validates a parsed manifest.

    Raises:
        ConfigError: a missing or mistyped key, a duplicate row id, an ordering that names
            no row of the table.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a table manifest must be a mapping")
    rows_raw = _require(values, "rows", list, source)
    rows = tuple(parse_row(r, values, source) for r in rows_raw)
    ids = [r.id for r in rows]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{source}: row id '{duplicates[0]}' appears twice")
    metrics = tuple(_require(values, "metrics", list, source))
    for metric in metrics:
        if metric not in METRICS:
            raise ConfigError(f"{source}: metric '{metric}' unknown; valid: {', '.join(METRICS)}")
    claims = tuple(_claim(c, source) for c in values.get("orderings") or [])
    keys = {r.key for r in rows}
    for claim in claims:
        for name in (claim.a, claim.b):
            if name is not None and name not in keys:
                raise ConfigError(f"{source}: ordering {claim.text!r} names '{name}', which is no row key of the table")
    return Table(
        name=_require(values, "name", str, source), title=str(values.get("title") or values["name"]),
        paper=str(values.get("paper") or ""), source=str(values.get("source") or ""), metrics=metrics, rows=rows,
        orderings=claims, notes=tuple(str(n) for n in values.get("notes") or []),
    )


def _claim(values: Any, source: str) -> Claim:
    if isinstance(values, str):
        return parse_claim(values, where=source)
    if isinstance(values, dict) and isinstance(values.get("claim"), str):
        return parse_claim(values["claim"], str(values.get("says") or ""), where=source)
    raise ConfigError(f"{source}: each ordering must be a string or a mapping with 'claim', got {values!r}")


def load_table_file(path: str | Path) -> Table:
    """Reads and validates one manifest file."""
    from atzoo.files.safe_read import read_yaml_file  # bounded read, PyYAML's safe loader

    path = Path(path)
    table = parse_table(read_yaml_file(path, "table manifest"), str(path))
    return Table(**{**table.__dict__, "path": path})


def table_names(directory: str | Path | None = None) -> list[str]:
    """The names of the packaged tables (file stems), sorted."""
    return sorted(p.stem for p in Path(directory or TABLES_DIR).glob("*.yaml"))


def load_table(name: str, directory: str | Path | None = None) -> Table:
    """The table called ``name``, or a manifest file given by path.

    Raises:
        ConfigError: no such table (naming the valid ones).
    """
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return load_table_file(candidate)
    path = Path(directory or TABLES_DIR) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown table '{name}'; valid: {', '.join(table_names(directory))}")
    return load_table_file(path)


def load_tables(directory: str | Path | None = None) -> list[Table]:
    """Every packaged table."""
    return [load_table(n, directory) for n in table_names(directory)]
