"""From table rows to runs: configs, run directories, their state, and the engine call.

This module is the one place that talks to the rest of atzoo (the config builder and
the engine's :func:`atzoo.engine.train`), through :func:`build_run_config` and
:func:`train_run`; everything else in :mod:`atzoo.reproduce` works on
:class:`PlannedRun` objects.

Layout: ``<out>/<setting>/<row key>/s<seed>``, one ordinary atzoo run directory per run.

State of a run directory:

* ``done`` -- ``eval.json`` is there: the run is reused as it is;
* ``partial`` -- an atzoo run without ``eval.json`` (interrupted): resumed from its newest
  good checkpoint;
* ``missing`` -- nothing there yet: trained from scratch.

A directory that holds a run of a *different* configuration (another scale, another
recipe) is never reused or resumed: that is a one-line error naming the first key that differs.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atzoo.config import RunConfig, build_config, config_to_dict
from atzoo.errors import ConfigError
from atzoo.reproduce.manifest import Row, Table
from atzoo.reproduce.scale import Scale, model_overrides, paper_steps, scale_overrides

#: Default root of reproduction outputs (relative to the working directory).
DEFAULT_ROOT = Path("reproductions")

#: Launch prefixes ``--emit-jobs`` can put in front of ``atzoo train``.
LAUNCHERS: dict[str, list[str]] = {
    "none": ["atzoo"],
    "python": [sys.executable, "-m", "atzoo"],
    "accelerate": ["accelerate", "launch", "-m", "atzoo"],
    "torchrun": ["torchrun", "--standalone", "--nproc_per_node=gpu", "-m", "atzoo"],
}


@dataclass(frozen=True)
class PlannedRun:
    """One (row, seed) of a table: what to train and where.

    Attributes:
        row: the table row.
        seed: ``run.seed``.
        run_dir: the run directory.
        recipe: the recipe file (absolute).
        overrides: every setting after the recipe: the row's, the scale's, the seed's.
        config: the resolved configuration these produce.
    """

    row: Row
    seed: int
    run_dir: Path
    recipe: Path
    overrides: tuple[str, ...]
    config: RunConfig

    def argv(self, launcher: str = "none") -> list[str]:
        """The ``atzoo train`` command line of this run (``--resume`` continues or starts it)."""
        if launcher not in LAUNCHERS:
            raise ConfigError(f"unknown launcher '{launcher}'; valid: {', '.join(LAUNCHERS)}")
        return [*LAUNCHERS[launcher], "train", self.row.method, "--recipe", recipe_argument(self.recipe),
                "--out", str(self.run_dir), "--resume", *self.overrides]

    def command(self, launcher: str = "none") -> str:
        """A self-contained shell line: skips a finished run, else trains (or resumes) it."""
        done = shlex.quote(str(self.run_dir / "eval.json"))
        return f"test -f {done} || {shlex.join(self.argv(launcher))}"


def recipe_argument(recipe: Path) -> str:
    """How a command line names ``recipe``: a bundled recipe by its name, so that the line
    runs on any machine where atzoo is installed (a wheel, another checkout path); any
    other file by its path."""
    from atzoo.config.resources import recipes_dir

    try:
        return recipe.resolve().relative_to(recipes_dir().resolve()).with_suffix("").as_posix()
    except ValueError:
        return str(recipe)


def find_recipe(name: str) -> Path:
    """The bundled recipe ``name`` (``arat_cifar10_resnet18.yaml``, ``ablation/01_none.yaml``), absolute.

    The bundled folder (:func:`atzoo.config.resources.recipes_dir`: the checkout's ``recipes/`` or the
    installed package's copy) is looked at first, so a file of the same name in the working
    directory cannot stand in for a table's recipe.

    Raises:
        ConfigError: no such recipe (naming the closest one).
    """
    from atzoo.config.resources import find_recipe as find_any, recipes_dir

    bundled = recipes_dir() / name
    return (bundled if bundled.is_file() else find_any(name)).resolve()


def parse_data_map(items: list[str] | None) -> dict[str, str]:
    """``["cifar10=npz:PATH"]`` -> ``{"cifar10": "npz:PATH"}`` (the ``--data`` option).

    Raises:
        ConfigError: an item is not ``NAME=DATASET``.
    """
    mapping: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"--data '{item}' must look like cifar10=npz:../shared/data/cifar10_subset.npz")
        mapping[name.strip()] = value.strip()
    return mapping


def build_run_config(recipe: Path, method: str, overrides: list[str]) -> RunConfig:
    """The resolved config of ``atzoo train METHOD --recipe RECIPE OVERRIDES`` (the engine's own builder)."""
    cfg = build_config(recipe, overrides)
    if cfg.method.name != method:
        raise ConfigError(f"recipe {recipe} is for method '{cfg.method.name}', but the row trains '{method}'")
    return cfg


def row_overrides(row: Row, recipe: Path, seed: int, scale: Scale | None, data: dict[str, str]) -> list[str]:
    """The row's overrides, then the dataset stand-in, the scale's settings and the seed."""
    overrides = list(row.overrides)
    base = build_run_config(recipe, row.method, overrides)
    dataset = scale.dataset if scale is not None and scale.dataset else data.get(base.data.name)
    if dataset is not None:
        overrides.append(f"data.name={dataset}")
    if scale is not None:
        overrides += [f"data.batch_size={scale.batch_size}"] if scale.batch_size else []
        overrides += model_overrides(base, scale)
        overrides += scale_overrides(build_run_config(recipe, row.method, overrides), scale, paper_steps(base))
    overrides.append(f"run.seed={seed}")
    return overrides


def _path_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text)


def default_out(table: Table, scale: Scale | None) -> Path:
    """``reproductions/<table>`` or ``reproductions/<table>-<scale>``."""
    return DEFAULT_ROOT / (table.name if scale is None else f"{table.name}-{scale.name}")


def plan_runs(
    table: Table, rows: list[Row], *, out: Path, seeds: list[int] | None = None, scale: Scale | None = None,
    data: dict[str, str] | None = None,
) -> list[PlannedRun]:
    """Every (row, seed) run of ``rows``, with its resolved config; nothing is written.

    Raises:
        ConfigError: a recipe is missing or a row's settings do not build a valid config.
    """
    planned = []
    recipes = {row.id: find_recipe(row.recipe) for row in rows}
    # Seed-major order: every row's first seed before any row's second, so that a run cut
    # short still has every method once.
    all_seeds = sorted({s for row in rows for s in (seeds if seeds is not None else row.seeds)})
    for seed in all_seeds:
        for row in rows:
            if seed not in (seeds if seeds is not None else row.seeds):
                continue
            overrides = row_overrides(row, recipes[row.id], seed, scale, data or {})
            cfg = build_run_config(recipes[row.id], row.method, overrides)
            run_dir = out / _path_part(row.setting) / _path_part(row.key) / f"s{seed}"
            planned.append(PlannedRun(row, seed, run_dir, recipes[row.id], tuple(overrides), cfg))
    return planned


# --------------------------------------------------------------------------- state


#: Flattened config keys that may differ between a stored run and its plan.
_BOOKKEEPING_PREFIXES = ("run.out", "run.name", "run.trackers", "data.root", "data.download", "data.num_workers")


def _flat(values: dict[str, Any]) -> dict[str, Any]:
    from atzoo.files.common import flatten

    return flatten(values)


def stored_config(path: Path) -> dict[str, Any]:
    """The flattened ``config.yaml`` of a run, with keys newer than the run at their defaults."""
    from atzoo.config import config_from_dict
    from atzoo.files.safe_read import read_yaml_file

    values = read_yaml_file(path, "config") or {}
    try:
        return _flat(config_to_dict(config_from_dict(values)))
    except (ConfigError, AttributeError, TypeError):  # another atzoo version's config: compare what is there
        return _flat(values) if isinstance(values, dict) else {}


def config_mismatch(planned: PlannedRun) -> str | None:
    """The first setting where the stored ``config.yaml`` differs from the plan, if any."""
    from atzoo.report.runs import NON_SEMANTIC_KEYS

    stored_file = planned.run_dir / "config.yaml"
    if not stored_file.is_file():
        return None
    stored = stored_config(stored_file)
    wanted = _flat(config_to_dict(planned.config))
    for key in sorted(set(stored) | set(wanted)):
        if key in NON_SEMANTIC_KEYS or key.startswith(_BOOKKEEPING_PREFIXES):
            continue
        if stored.get(key) != wanted.get(key):
            return f"{key}={stored.get(key)!r} (planned {wanted.get(key)!r})"
    return None


def run_state(planned: PlannedRun) -> str:
    """``done``, ``partial`` or ``missing`` (see the module docstring).

    Raises:
        ConfigError: the directory holds another configuration's run, or files that are not a run.
    """
    from atzoo.engine.rundir import is_nonempty_dir, looks_like_run

    path = planned.run_dir
    if not is_nonempty_dir(path):
        return "missing"
    if not looks_like_run(path):
        raise ConfigError(f"{path} holds files that are not an atzoo run; move them or choose another --out")
    mismatch = config_mismatch(planned)
    if mismatch is not None:
        raise ConfigError(f"{path} holds a run with another configuration ({mismatch}); choose another --out")
    return "done" if (path / "eval.json").is_file() else "partial"


def train_run(planned: PlannedRun, *, resume: bool) -> Path:
    """Trains (or resumes) one planned run with the engine; returns its directory."""
    from atzoo.engine import train

    return train(planned.config, out=planned.run_dir, resume=resume)
