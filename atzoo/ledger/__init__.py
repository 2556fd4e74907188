"""The settings ledger: where every value of every shipped recipe comes from.

One YAML file per method (``atzoo/ledger/<method>.yaml``) plus ``_common.yaml`` for the
settings that every method shares (the evaluation section). Each file is a list of
entries::

    method: arat
    settings:
      - key: optim.milestones            # a config key, section.field
        atzoo: [76, 91]                  # the value atzoo's recipes use
        official: [76, 91]               # the value that produced the paper's numbers
        source: "futakw/AR-AT train_ARAT.py:340-374 (CustomLR) ..."
        note: "..."                      # why atzoo deviates, when atzoo != official
      - key: method.gamma
        when: {model.name: wrn34_10}     # only for recipes with these values
        atzoo: 100.0
        ...

Rules (checked by :func:`check_recipe`, run by ``tests/test_ledger.py`` on every shipped
recipe):

* ``source`` is a citation (paper table/section, or repository, file and line) or says
  ``atzoo's choice`` (:data:`CHOICE`); an entry without it is an error.
* ``atzoo`` equals the value the recipe resolves to (recipe, else the method's paper
  defaults, else the dataclass default): a recipe edited without its ledger fails.
* where ``official`` is given and differs from ``atzoo``, ``note`` gives the reason (a
  deliberate deviation); entries whose ``key`` starts with ``behaviour.`` describe a
  deviation of behaviour rather than of a config value and are listed, not compared.
* every key a recipe sets, every key the method's paper defaults set, and every field of the
  method's config must have an entry; the identity keys :data:`IDENTITY_KEYS` (what the
  recipe *is*, not how it trains) need none.

``when`` matches on resolved config values (a value or a list of allowed values) and on
``recipe``, an fnmatch glob of the recipe's name (``ablation/*``). Of the entries of a key
that match, those with a ``when`` come before those without; within each group the method's
file is searched first, then the files it names under ``include:`` (a variant such as
Asym-TRADES falls back on AR-AT's entries), then ``_common.yaml``; the first one wins.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from atzoo.errors import ConfigError

LEDGER_DIR = Path(__file__).resolve().parent
COMMON = "_common"
#: The mark of a value atzoo chose itself (no paper or official value behind it).
CHOICE = "atzoo's choice"
#: Keys that name the setting rather than configure it: no source needed.
IDENTITY_KEYS: frozenset[str] = frozenset({"data.name", "model.name", "method.name", "run.name"})
#: Pseudo-keys that document a behaviour (not a config value); never compared with a recipe.
BEHAVIOUR_PREFIX = "behaviour."


@dataclass(frozen=True)
class Entry:
    """One row of a ledger: a setting, atzoo's value, the official value, the source, a note."""

    key: str
    atzoo: Any
    source: str
    official: Any = None
    has_official: bool = False
    note: str = ""
    when: dict[str, Any] = field(default_factory=dict)
    ledger: str = ""

    @property
    def is_choice(self) -> bool:
        return CHOICE in self.source

    @property
    def deviates(self) -> bool:
        return self.has_official and not values_equal(self.atzoo, self.official)

    def matches(self, values: dict[str, Any], recipe_name: str) -> bool:
        """Whether this entry applies to a recipe with resolved ``values`` and name ``recipe_name``."""
        for key, allowed in self.when.items():
            options = allowed if isinstance(allowed, list) else [allowed]
            if key == "recipe":
                if not any(fnmatch.fnmatchcase(recipe_name, str(o)) for o in options):
                    return False
            elif not any(values_equal(values.get(key), o) for o in options):
                return False
        return True


_FRACTION = re.compile(r"^\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")


def normalise(value: Any) -> Any:
    """A comparable form: ``8/255`` and ints become floats, tuples lists."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _FRACTION.match(value)
        return float(match.group(1)) / float(match.group(2)) if match else value
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    return value


def values_equal(a: Any, b: Any) -> bool:
    """Equality after :func:`normalise` (floats to 1e-9 relative)."""
    a, b = normalise(a), normalise(b)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def ledger_names() -> list[str]:
    """Methods with a ledger file (``_common`` excluded)."""
    return sorted(p.stem for p in LEDGER_DIR.glob("*.yaml") if p.stem != COMMON)


@lru_cache(maxsize=None)
def load_ledger(name: str) -> tuple[Entry, ...]:
    """The entries of ``atzoo/ledger/<name>.yaml`` (empty when the file does not exist).

    Raises:
        ConfigError: an entry lacks ``key`` or ``atzoo``, or has an unknown field.
    """
    path = LEDGER_DIR / f"{name}.yaml"
    if not path.is_file():
        return ()
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = []
    for i, raw in enumerate(data.get("settings") or []):
        where = f"{path.name} entry {i} ({raw.get('key', '?') if isinstance(raw, dict) else raw!r})"
        if not isinstance(raw, dict) or "key" not in raw or "atzoo" not in raw:
            raise ConfigError(f"ledger {where}: needs 'key' and 'atzoo'")
        unknown = set(raw) - {"key", "atzoo", "official", "source", "note", "when"}
        if unknown:
            raise ConfigError(f"ledger {where}: unknown field(s) {', '.join(sorted(unknown))}")
        entries.append(Entry(
            key=str(raw["key"]), atzoo=raw["atzoo"], source=str(raw.get("source") or "").strip(),
            official=raw.get("official"), has_official="official" in raw, note=str(raw.get("note") or "").strip(),
            when=dict(raw.get("when") or {}), ledger=name,
        ))
    for parent in data.get("include") or []:  # a variant's ledger falls back on its parent's
        entries += load_ledger(str(parent))
    return tuple(entries)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in (values or {}).items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class RecipeLedger:
    """The ledger rows of one recipe and what is wrong with them.

    Attributes:
        recipe: the recipe's name (``arat_cifar10_resnet18``, ``ablation/08_all``).
        method: the recipe's method.
        rows: ``(entry, resolved value)`` for every required key that has an entry, plus the
            matching ``behaviour.*`` entries, in ledger order.
        problems: one line per missing entry, missing source, value mismatch or
            unexplained deviation; empty when the recipe is fully traced.
    """

    recipe: str
    method: str
    rows: list[tuple[Entry, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def recipe_name(path: Path) -> str:
    """``recipes/ablation/08_all.yaml`` -> ``ablation/08_all`` (relative to the recipes folder)."""
    from atzoo.config.recipes import recipes_dir

    try:
        return path.resolve().relative_to(recipes_dir().resolve()).with_suffix("").as_posix()
    except ValueError:
        return path.stem


def required_keys(resolution: Any) -> list[str]:
    """Keys a recipe must trace: those set by the recipe or the method's paper defaults, and
    every field of the method's config; identity keys excluded."""
    keys = [k for k, src in resolution.sources.items() if src in ("recipe", "method")]
    keys += [f"method.{f.name}" for f in dataclasses.fields(resolution.config.method)]
    seen: list[str] = []
    for key in keys:
        if key not in IDENTITY_KEYS and key not in seen:
            seen.append(key)
    return seen


def check_recipe(path: str | Path) -> RecipeLedger:
    """Traces every value of recipe ``path`` to its ledger entry; see the module docstring."""
    from atzoo.config import config_to_dict, resolve_config

    path = Path(path)
    resolution = resolve_config(path)
    values = flatten(config_to_dict(resolution.config))
    name = recipe_name(path)
    method = resolution.config.method.name
    report = RecipeLedger(name, method)
    entries = load_ledger(method) + load_ledger(COMMON)
    if not load_ledger(method):
        report.problems.append(f"{name}: no ledger for method '{method}' (add atzoo/ledger/{method}.yaml)")
    # Conditioned entries first (stable): a ``when`` entry of _common.yaml overrides a
    # method's unconditioned one, e.g. the Imagenette attack radius.
    matching = sorted((e for e in entries if e.matches(values, name)), key=lambda e: not e.when)
    for key in required_keys(resolution):
        entry = next((e for e in matching if e.key == key), None)
        if entry is None:
            report.problems.append(f"{name}: {key} = {values.get(key)!r} has no ledger entry (a source or \"{CHOICE}\")")
            continue
        report.rows.append((entry, values.get(key)))
        report.problems += _entry_problems(name, entry, values.get(key))
    for entry in matching:
        if entry.key.startswith(BEHAVIOUR_PREFIX) and entry not in [e for e, _ in report.rows]:
            report.rows.append((entry, entry.atzoo))
            report.problems += _entry_problems(name, entry, entry.atzoo)
    return report


def _entry_problems(name: str, entry: Entry, value: Any) -> list[str]:
    problems = []
    where = f"{name}: {entry.key} (atzoo/ledger/{entry.ledger}.yaml)"
    if not entry.source:
        problems.append(f"{where} has neither a source nor \"{CHOICE}\"")
    if not entry.key.startswith(BEHAVIOUR_PREFIX) and not values_equal(entry.atzoo, value):
        problems.append(f"{where}: the ledger says {entry.atzoo!r}, the recipe resolves to {value!r}")
    if entry.deviates and not entry.note:
        problems.append(f"{where}: atzoo {entry.atzoo!r} differs from official {entry.official!r} without a note")
    return problems


def settings_recipe(method: str) -> Path:
    """The recipe ``atzoo docs METHOD --settings`` shows: ``<method>_cifar10_resnet18``, else
    ``<method>_cifar10_wrn34_10``, else the first shipped top-level recipe of the method.

    Raises:
        ConfigError: the method has no shipped recipe.
    """
    from atzoo.config.recipes import recipe_setting, recipes_dir

    folder = recipes_dir()
    for stem in (f"{method}_cifar10_resnet18", f"{method}_cifar10_wrn34_10"):
        if (folder / f"{stem}.yaml").is_file() and (recipe_setting(folder / f"{stem}.yaml") or ("",))[0] == method:
            return folder / f"{stem}.yaml"
    for path in sorted(folder.glob("*.yaml")):
        setting = recipe_setting(path)
        if setting and setting[0] == method:
            return path
    raise ConfigError(f"method '{method}' has no shipped recipe; pass --recipe NAME")


def format_value(value: Any) -> str:
    """A value as YAML flow text (``[76, 91]``, ``null``, ``0.01``)."""
    if value is None or isinstance(value, (bool, list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def settings_rows(report: RecipeLedger) -> list[dict[str, str]]:
    """``setting | atzoo | official | source | note`` rows of a recipe's ledger."""
    rows = []
    for entry, value in report.rows:
        shown_value = entry.atzoo if entry.key.startswith(BEHAVIOUR_PREFIX) else value
        rows.append({
            "setting": entry.key,
            "atzoo": format_value(entry.atzoo if isinstance(entry.atzoo, str) and "/" in entry.atzoo else shown_value),
            "official": format_value(entry.official) if entry.has_official else "-",
            "source": entry.source,
            "note": entry.note + (" [deviation]" if entry.deviates else ""),
        })
    return rows


def settings_markdown(report: RecipeLedger) -> str:
    """The rows as a Markdown table (for docs and the HTML report)."""
    lines = [f"Settings of `{report.recipe}` ({report.method})", "",
             "| setting | atzoo | official | source | note |", "|---|---|---|---|---|"]
    for row in settings_rows(report):
        cells = [row[k].replace("|", "\\|").replace("\n", " ") for k in ("setting", "atzoo", "official", "source", "note")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
