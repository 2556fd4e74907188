"""``atzoo train METHOD``: build the config from flags, recipe and overrides; run the engine.

Example::

    atzoo train at --model resnet18 --dataset cifar10 --epochs 100 attack.eps=8/255
    atzoo train arat --recipe arat_cifar10_resnet18 method.split_bn=false   # runs/<name>-<hash>
    atzoo train arat --resume --out runs/arat-resnet18-cifar10-s0 --epochs 120

The default run directory is ``runs/<run.name>`` (or ``<method>-<model>-<dataset>-s<seed>``),
followed by a short hash of the settings when flags or overrides change the recipe's
training configuration, so an ablation never lands in its main run's directory.
``--resume`` continues a run from its own ``config.yaml``: other flags are needed only to
find the directory (``--out``), and ``--epochs`` may extend the training.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from atzoo.config import (
    Resolution,
    RunConfig,
    annotated_yaml,
    apply_overrides,
    build_config,
    config_from_dict,
    config_to_dict,
    load_recipe,
    merge,
    parse_override,
    read_config_file,
    resolve,
    resolve_config,
)
from atzoo.errors import ConfigError, InterruptedRun

#: Overrides that name the run directory themselves (no hash is added to the name then).
NAMING_KEYS: tuple[str, ...] = ("run.name", "run.out")


def recipe_method(recipe: Path | None) -> str | None:
    """The ``method.name`` a recipe file names, if any."""
    if recipe is None:
        return None
    method = load_recipe(recipe).get("method") or {}
    name = method.get("name") if isinstance(method, dict) else None
    return name if isinstance(name, str) else None


def make_config(
    method: str,
    *,
    model: str | None = None,
    dataset: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    recipe: Path | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """The resolved RunConfig of ``atzoo train`` (recipe < flags < ``section.key=value``).

    Raises:
        ConfigError: the recipe or an override names another method than ``method``.
    """
    return resolve_train_config(method, model=model, dataset=dataset, epochs=epochs, batch_size=batch_size,
                                seed=seed, recipe=recipe, overrides=overrides).config


def resolve_train_config(method: str, *, recipe: Path | None = None, overrides: list[str] | None = None,
                         auto_recipe: bool = False, **flags: Any) -> Resolution:
    """:func:`make_config` with the source of every value (and the recipe used).

    Args:
        auto_recipe: without ``recipe``, start from the shipped recipe of (method,
            dataset, model) when there is one (:func:`atzoo.config.recipes.default_recipe`);
            otherwise the method's paper defaults are the base.
        flags: ``model``, ``dataset``, ``epochs``, ``batch_size``, ``seed`` (``None``: not given).
    """
    named = recipe_method(recipe)
    if named is not None and named != method:
        raise ConfigError(f"recipe {recipe} is for method '{named}', not '{method}'; use 'atzoo train {named}'")
    if recipe is None and auto_recipe:
        recipe = shipped_recipe(method, flags.get("model"), flags.get("dataset"), list(overrides or []))
    resolution = resolve_config(recipe, list(overrides or []), **flag_sections(method, **flags))
    if resolution.config.method.name != method:
        raise ConfigError(f"method.name={resolution.config.method.name} contradicts the command's method '{method}'")
    return resolution


def shipped_recipe(method: str, model: str | None, dataset: str | None, overrides: list[str]) -> Path | None:
    """The shipped recipe for the command's (method, dataset, model), the names taken from
    the flags or from ``data.name=``/``model.name=`` overrides (the last one wins)."""
    from atzoo.config import DataConfig, ModelConfig
    from atzoo.config.recipes import default_recipe

    names = {"data": dataset, "model": model}
    for text in overrides:
        section, leaf, value = parse_override(text)
        if leaf == "name" and section in names and isinstance(value, str):
            names[section] = value
    return default_recipe(method, names["data"] or DataConfig.name, names["model"] or ModelConfig.name)


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


def flag_sections(method: str, *, model: str | None = None, dataset: str | None = None, epochs: int | None = None,
                  batch_size: int | None = None, seed: int | None = None) -> dict[str, dict[str, Any]]:
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


def name_run(cfg: RunConfig, method: str, *, model: str | None, dataset: str | None, seed: int | None,
             recipe: Path | None, overrides: list[str]) -> RunConfig:
    """Adds the settings hash to the default run name (see the module docstring).

    The base is the recipe with the flags that are part of the name (method, model,
    dataset, seed); a run that sets ``run.name``/``run.out`` itself keeps its name.
    """
    if cfg.run.out or any(o.split("=", 1)[0].strip() in NAMING_KEYS for o in overrides):
        return cfg
    from atzoo.engine.rundir import default_run_name, format_run_name

    base = build_config(recipe, [], **flag_sections(method, model=model, dataset=dataset, seed=seed))
    suffix = settings_hash(cfg, base)
    if suffix is not None:
        name = format_run_name(cfg.run.name, cfg) if cfg.run.name else default_run_name(cfg)
        cfg.run.name = f"{name}-{suffix}"
    return cfg


def resumed_config(saved_file: Path, method: str, *, recipe: Path | None, overrides: list[str],
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
    if recipe is not None:
        values = merge(values, load_recipe(recipe))
    for section, given in flag_sections(method, **flags).items():
        values = merge(values, {section: {k: v for k, v in given.items() if v is not None}})
    return resolve(config_from_dict(apply_overrides(values, overrides)))


def run_training(method: str, *, recipe: Path | None = None, overrides: list[str] | None = None,
                 out: Path | None = None, force: bool = False, resume: bool = False, auto_recipe: bool = False,
                 **flags: Any) -> Path:
    """``atzoo train`` as a function (the CLI and ``atzoo.train`` call it); returns the run directory.

    ``flags`` are the command's ``model``, ``dataset``, ``epochs``, ``batch_size`` and
    ``seed`` (``None``: not given).
    """
    from atzoo.engine import train

    overrides = list(overrides or [])
    explicit = recipe is not None
    if recipe is None and auto_recipe:  # atzoo train METHOD --model M --dataset D: the shipped recipe
        recipe = shipped_recipe(method, flags.get("model"), flags.get("dataset"), overrides)
    cfg, run_dir = plan_run(method, recipe=recipe, overrides=overrides, out=out, **flags)
    saved = run_dir / "config.yaml"
    if resume and saved.is_file():
        # The run's own config.yaml, not a fresh resolution: nothing was picked or rescaled
        # now (the engine announces a longer --epochs itself).
        cfg, notes = resumed_config(saved, method, recipe=recipe, overrides=overrides, **flags), []
    else:
        notes = announce(resolve_train_config(method, recipe=recipe, overrides=overrides, **flags), explicit=explicit)
    return train(cfg, out=run_dir, force=force, resume=resume, notes=notes)


def plan_run(method: str, *, recipe: Path | None = None, overrides: list[str] | None = None, out: Path | None = None,
             **flags: Any) -> tuple[RunConfig, Path]:
    """The resolved config of ``atzoo train`` and the run directory it would use."""
    from atzoo.engine.rundir import resolve_run_dir

    overrides = list(overrides or [])
    cfg = make_config(method, recipe=recipe, overrides=overrides, **flags)
    cfg = name_run(cfg, method, model=flags.get("model"), dataset=flags.get("dataset"), seed=flags.get("seed"),
                   recipe=recipe, overrides=overrides)
    return cfg, resolve_run_dir(cfg, out)


def summary_line(eval_payload: dict[str, Any]) -> str:
    """``clean 81.20  pgd20 43.10  autoattack 40.20  (the same 1000 test images, linf eps 8/255)``
    (percent) from eval.json's top level: the current weights' numbers, all measured on one
    set of images (``previous`` holds other weights' results and is never shown)."""
    from atzoo.report.leaderboard import format_eps

    names = (("clean_acc", "clean"), ("pgd20_acc", "pgd20"), ("autoattack_acc", "autoattack"))
    line = "  ".join(f"{label} {eval_payload[key]:.2f}" for key, label in names
                     if isinstance(eval_payload.get(key), (int, float)))
    n, eps = eval_payload.get("n_examples"), eval_payload.get("eps")
    threat = f", {eval_payload.get('norm')} eps {format_eps(eps)}" if isinstance(eps, (int, float)) else ""
    return f"{line}  (the same {n} test images{threat})" if isinstance(n, int) and line else line


def _flag_args(flags: dict[str, Any]) -> list[str]:
    return [str(part) for flag, value in flags.items() if value is not None for part in (flag, value)]


def interrupted(exc: InterruptedRun, args: list[str]) -> InterruptedRun:
    """The line of a run stopped by Ctrl-C (SIGINT), with the command that continues it:

    ``atzoo: interrupted; continue the run in DIR with: atzoo train ARGS --resume --out DIR``
    (from its newest checkpoint, or from the start when it has none yet). A run stopped
    before its first step left nothing (``--force``: the old run is back in place):
    ``atzoo: interrupted before the run started; nothing was changed in DIR``.
    """
    if not exc.resumable:
        return InterruptedRun(f"interrupted before the run started; nothing was changed in {exc.run_dir}")
    command = shlex.join(["atzoo", "train", *args, "--resume", "--out", str(exc.run_dir)])
    return InterruptedRun(f"interrupted; continue the run in {exc.run_dir} with: {command}", exc.run_dir, True)


def register(app: typer.Typer) -> None:
    """Adds ``atzoo train`` to the CLI."""

    @app.command("train")
    def train_command(
        method: str = typer.Argument(..., help="Training method (see 'atzoo list methods')."),
        overrides: Optional[list[str]] = typer.Argument(None, help="section.key=value settings, e.g. optim.lr=0.05"),
        model: Optional[str] = typer.Option(None, "--model", help="Architecture (see 'atzoo list models')."),
        dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name or npz:PATH."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch size."),
        recipe: Optional[Path] = typer.Option(None, "--recipe", help="A recipe: its name (see 'atzoo list recipes') or a YAML file."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<name>)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
        force: bool = typer.Option(False, "--force", help="Replace an existing run directory."),
        resume: bool = typer.Option(
            False, "--resume",
            help="Continue the run in --out (or the default directory) from its config.yaml and newest good "
                 "checkpoint; --epochs may extend it.",
        ),
        print_config: bool = typer.Option(
            False, "--print-config", help="Print the resolved config (with each value's source) and exit."
        ),
    ) -> None:
        """Train a robust classifier; writes config, metrics, checkpoints, model and eval.json.

        Without --recipe, the shipped recipe of (METHOD, --dataset, --model) is used when
        there is one; otherwise the method's own paper defaults.
        """
        import json

        if print_config:
            typer.echo(annotated_yaml(resolve_train_config(
                method, model=model, dataset=dataset, epochs=epochs, batch_size=batch_size, seed=seed,
                recipe=recipe, overrides=overrides, auto_recipe=True)), nl=False)
            return

        flags = {"--model": model, "--dataset": dataset, "--epochs": epochs, "--batch-size": batch_size,
                 "--recipe": recipe, "--seed": seed}
        try:
            run_dir = run_training(method, model=model, dataset=dataset, epochs=epochs, batch_size=batch_size,
                                   seed=seed, recipe=recipe, overrides=overrides, out=out, force=force, resume=resume,
                                   auto_recipe=True)
        except InterruptedRun as exc:
            raise interrupted(exc, [method, *_flag_args(flags), *(overrides or [])]) from None
        from accelerate import PartialState

        state = PartialState()
        # Leave together and close the process group (as `atzoo eval` does): a rank that
        # exits while the main process still writes curves.png can be aborted by gloo.
        state.wait_for_everyone()
        state.destroy_process_group()
        if not state.is_main_process:
            return
        console = Console()
        console.print(f"run directory: {run_dir}", highlight=False, soft_wrap=True)
        eval_file = run_dir / "eval.json"
        if read_config_file(run_dir / "config.yaml").run.evaluate and eval_file.is_file():
            console.print(f"eval: {summary_line(json.loads(eval_file.read_text()))}", highlight=False)
