"""Planning a run: the one place a run's configuration and directory are decided.

:func:`plan_run` takes what a user asks for -- a method, a recipe (or the shipped recipe of
the setting), the ``atzoo train`` flags, ``section.key=value`` overrides and whether to
resume -- and returns a :class:`RunPlan`: the resolved config with the source of each
value, the run directory and the lines to announce. It reads each recipe file once and
resolves the run's config once. ``atzoo train``, :func:`atzoo.train`, ``atzoo reproduce``
and the demo all plan through it and run the plan with :func:`run_plan`::

    plan = plan_run("arat", recipe="arat_cifar10_resnet18", overrides=["method.split_bn=false"])
    plan.run_dir          # runs/arat-resnet18-cifar10-s0-<hash>: an ablation gets its own folder
    run_plan(plan)        # engine.train(plan.config, out=plan.run_dir, notes=plan.notes)

The default run directory is ``runs/<run.name>`` (or ``<method>-<model>-<dataset>-s<seed>``),
followed by a short hash of the settings when flags or overrides change the recipe's
training configuration, so an ablation never lands in its main run's directory.
``resume`` continues a run from its own ``config.yaml``: other flags are needed only to
find the directory (``out``), and ``epochs`` may extend the training.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atzoo.config import (
    DataConfig,
    ModelConfig,
    Resolution,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_recipe,
    merge,
    parse_override,
    read_config_file,
    resolve,
    resolve_config,
)
from atzoo.errors import ConfigError

#: The ``atzoo train`` flags (``None``: not given); everything else is an override.
TRAIN_FLAGS: tuple[str, ...] = ("model", "dataset", "epochs", "batch_size", "seed")
#: Overrides that name the run directory themselves (no hash is added to the name then).
NAMING_KEYS: tuple[str, ...] = ("run.name", "run.out")


@dataclass
class RunPlan:
    """What a run will be, decided before anything is written.

    Attributes:
        config: the resolved, validated config (for a resumed run: its own ``config.yaml``
            with the settings given now on top).
        run_dir: the run directory.
        resolved: the resolution the config came from: each value's source
            (``atzoo.config.SOURCES``), the recipe, the rescaling notes (``None`` for a
            resumed run, whose values are its own).
        notes: lines the engine prints and logs when the run starts (the recipe used, the
            rescaled schedule).
        resume: continue the run in ``run_dir``.
    """

    config: RunConfig
    run_dir: Path
    resolved: Resolution | None = None
    notes: list[str] = field(default_factory=list)
    resume: bool = False

    @property
    def sources(self) -> dict[str, str]:
        """``section.key`` -> where the value came from; keys absent are the dataclass defaults."""
        return dict(self.resolved.sources) if self.resolved is not None else {}

    @property
    def recipe(self) -> Path | None:
        """The recipe the config started from (as given, or the shipped recipe's file)."""
        return self.resolved.recipe if self.resolved is not None else None

    def source(self, key: str) -> str:
        """Where ``section.key`` came from (``default`` when no layer set it)."""
        return self.sources.get(key, "default")

    @property
    def resolution(self) -> Resolution:
        """The config with its sources (for ``--print-config``: :func:`atzoo.config.annotated_yaml`)."""
        return self.resolved if self.resolved is not None else Resolution(self.config)


def plan_run(
    method: str,
    *,
    recipe: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    auto_recipe: bool = False,
    hash_name: bool = True,
    **flags: Any,
) -> RunPlan:
    """Plans ``atzoo train METHOD [--recipe R] [flags] [overrides]``; nothing is written.

    Args:
        recipe: a recipe file or a bundled recipe's name; it must be a recipe of ``method``.
        overrides: ``section.key=value`` settings, applied last.
        out: the run directory (default: ``run.out``, else ``runs/<name>``).
        resume: continue the run in the directory from its ``config.yaml`` when there is one.
        auto_recipe: without ``recipe``, start from the shipped recipe of (method, dataset,
            model) when there is one (:func:`atzoo.config.recipes.find_default_recipe`);
            otherwise the method's paper defaults are the base.
        hash_name: add the settings hash to the default run name (``False``: callers that
            name their directories themselves, as ``atzoo reproduce``).
        flags: :data:`TRAIN_FLAGS` (``None``: not given).

    Raises:
        ConfigError: a bad recipe, flag or override; a recipe or override for another
            method; a resumed run of another method.
    """
    unknown = sorted(set(flags) - set(TRAIN_FLAGS))
    if unknown:
        raise TypeError(f"plan_run() got unexpected flags {unknown}; valid: {', '.join(TRAIN_FLAGS)}")
    overrides = list(overrides or [])
    explicit = recipe is not None
    recipe_path, values = _recipe(method, recipe, auto_recipe, flags, overrides)
    named = recipe if explicit else recipe_path  # as given (a name or a file), for --print-config
    resolution = _resolve(method, named, values, overrides, flags_as_sections(method, **flags))
    cfg = resolution.config
    if hash_name:
        cfg = name_run(cfg, method, flags, recipe_path, values, overrides)
    from atzoo.engine.rundir import resolve_run_dir

    run_dir = resolve_run_dir(cfg, out)
    saved = run_dir / "config.yaml"
    if resume and saved.is_file():
        # The run's own config.yaml, not a fresh resolution: nothing was picked or rescaled
        # now (the engine announces a longer epochs itself).
        cfg = resumed_config(saved, method, recipe_values=values if recipe_path is not None else None,
                             overrides=overrides, **flags)
        return RunPlan(cfg, run_dir, None, [], resume=True)
    return RunPlan(cfg, run_dir, resolution, announce(resolution, explicit=explicit), resume=resume)


def run_plan(plan: RunPlan, *, force: bool = False) -> Path:
    """Runs a plan with the engine; returns the run directory."""
    from atzoo.engine.trainer import train

    return train(plan.config, out=plan.run_dir, force=force, resume=plan.resume, notes=plan.notes)


# --------------------------------------------------------------------------- the steps


def _recipe(method: str, recipe: str | Path | None, auto_recipe: bool, flags: dict[str, Any],
            overrides: list[str]) -> tuple[Path | None, dict[str, Any]]:
    """The recipe file and its contents (each read once), checked to be a recipe of ``method``."""
    from atzoo.config.resources import find_recipe

    if recipe is not None:
        path: Path | None = find_recipe(recipe)
        values = load_recipe(path)  # type: ignore[arg-type]
        shown: Path | str = Path(recipe)
    elif auto_recipe:
        found = shipped_recipe(method, flags.get("model"), flags.get("dataset"), overrides)
        path, values = found if found is not None else (None, {})
        shown = path  # type: ignore[assignment]
    else:
        return None, {}
    section = values.get("method") or {}
    named = section.get("name") if isinstance(section, dict) else None
    if isinstance(named, str) and named != method:
        raise ConfigError(f"recipe {shown} is for method '{named}', not '{method}'; use 'atzoo train {named}'")
    return path, values


def _resolve(method: str, recipe: str | Path | None, values: dict[str, Any], overrides: list[str],
             sections: dict[str, dict[str, Any]]) -> Resolution:
    resolution = resolve_config(recipe, overrides, recipe_values=values, **sections)
    if resolution.config.method.name != method:
        raise ConfigError(f"method.name={resolution.config.method.name} contradicts the command's method '{method}'")
    return resolution


def shipped_recipe(method: str, model: str | None, dataset: str | None,
                   overrides: list[str]) -> tuple[Path, dict[str, Any]] | None:
    """The shipped recipe (and its contents) for the command's (method, dataset, model), the
    names taken from the flags or from ``data.name=``/``model.name=`` overrides (the last wins)."""
    from atzoo.config.recipes import find_default_recipe

    names = {"data": dataset, "model": model}
    for text in overrides:
        section, leaf, value = parse_override(text)
        if leaf == "name" and section in names and isinstance(value, str):
            names[section] = value
    return find_default_recipe(method, names["data"] or DataConfig.name, names["model"] or ModelConfig.name)


def announce(resolution: Resolution, *, explicit: bool) -> list[str]:
    """The lines that say what the config was built from: the shipped recipe or the
    method's paper defaults (one line), then the schedule-rescaling note, if any.

    The engine prints them (and logs them to metrics.jsonl) once the run has started, so
    an error before that stays the only line on stderr.
    """
    method = resolution.config.method.name
    lines: list[str] = []
    if resolution.recipe is not None and not explicit:
        lines.append(f"using the shipped recipe {resolution.recipe} (pass --recipe to choose another)")
    elif resolution.recipe is None:
        lines.append(f"no shipped recipe for {method} on {resolution.config.data.name} with "
                     f"{resolution.config.model.name}; using {method}'s paper defaults")
    return lines + list(resolution.notes)


def flags_as_sections(method: str, *, model: str | None = None, dataset: str | None = None,
                      epochs: int | None = None, batch_size: int | None = None,
                      seed: int | None = None) -> dict[str, dict[str, Any]]:
    """The ``atzoo train`` flags as config sections (``None``: not given)."""
    return {"method": {"name": method}, "model": {"name": model}, "data": {"name": dataset, "batch_size": batch_size},
            "optim": {"epochs": epochs}, "run": {"seed": seed}}


def settings_hash(cfg: RunConfig, base: RunConfig) -> str | None:
    """Six hex digits naming how ``cfg`` differs from ``base`` in what training learns.

    ``None`` when they agree on every key that ``--resume`` checks (the same keys decide
    whether two runs may share a directory).
    """
    from atzoo.engine.resume import config_differences

    keys = config_differences(base, cfg)
    if not keys:
        return None
    values = config_to_dict(cfg)
    text = "\n".join(f"{key}={values[key.split('.')[0]].get(key.split('.', 1)[1])!r}" for key in keys)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def name_run(cfg: RunConfig, method: str, flags: dict[str, Any], recipe: Path | None, values: dict[str, Any],
             overrides: list[str]) -> RunConfig:
    """Adds the settings hash to the default run name (see the module docstring).

    The base is the recipe with the flags that are part of the name (method, model,
    dataset, seed), resolved from the recipe's contents already read; a run that sets
    ``run.name``/``run.out`` itself keeps its name.
    """
    if cfg.run.out or any(o.split("=", 1)[0].strip() in NAMING_KEYS for o in overrides):
        return cfg
    from atzoo.engine.rundir import default_run_name, format_run_name

    naming = {k: flags.get(k) for k in ("model", "dataset", "seed")}
    base = resolve_config(recipe, [], recipe_values=values, **flags_as_sections(method, **naming)).config
    suffix = settings_hash(cfg, base)
    if suffix is not None:
        name = format_run_name(cfg.run.name, cfg) if cfg.run.name else default_run_name(cfg)
        cfg.run.name = f"{name}-{suffix}"
    return cfg


def resumed_config(saved_file: Path, method: str, *, recipe_values: dict[str, Any] | None, overrides: list[str],
                   **flags: Any) -> RunConfig:
    """A run's ``config.yaml`` with only the settings given now applied on top.

    The engine then refuses any change that matters for training (naming each key with
    both values) except a longer ``optim.epochs``.
    """
    saved = read_config_file(saved_file)
    if saved.method.name != method:
        raise ConfigError(f"{saved_file.parent} is a run of '{saved.method.name}', not '{method}'; "
                          f"use 'atzoo train {saved.method.name} --resume'")
    values = config_to_dict(saved)
    if recipe_values is not None:
        values = merge(values, copy.deepcopy(recipe_values))
    for section, given in flags_as_sections(method, **flags).items():
        values = merge(values, {section: {k: v for k, v in given.items() if v is not None}})
    return resolve(config_from_dict(apply_overrides(values, overrides)))


# --------------------------------------------------------------------------- shorthands


def resolve_train_config(method: str, *, recipe: str | Path | None = None, overrides: list[str] | None = None,
                         auto_recipe: bool = False, **flags: Any) -> Resolution:
    """The config of ``atzoo train`` with each value's source (what ``--print-config`` shows):
    :func:`plan_run`'s, before the run's name gets its settings hash."""
    return plan_run(method, recipe=recipe, overrides=overrides, auto_recipe=auto_recipe, hash_name=False,
                    **flags).resolution


def make_config(method: str, *, recipe: str | Path | None = None, overrides: list[str] | None = None,
                **flags: Any) -> RunConfig:
    """The resolved RunConfig of ``atzoo train`` (recipe < flags < ``section.key=value``)."""
    return resolve_train_config(method, recipe=recipe, overrides=overrides, **flags).config
