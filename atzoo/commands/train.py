"""``atzoo train METHOD``: build the config from flags, recipe and overrides; run the engine.

Example::

    atzoo train at --model resnet18 --dataset cifar10 --epochs 100 attack.eps=8/255
    atzoo train arat --recipe recipes/arat_cifar10_resnet18.yaml --resume
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from atzoo.config import Resolution, RunConfig, annotated_yaml, load_recipe, parse_override, resolve_config
from atzoo.errors import ConfigError, InterruptedRun


def recipe_method(recipe: Path | None) -> str | None:
    """The ``method.name`` a recipe file names, if any."""
    if recipe is None:
        return None
    method = load_recipe(recipe).get("method") or {}
    name = method.get("name") if isinstance(method, dict) else None
    return name if isinstance(name, str) else None


def make_config(method: str, **options: Any) -> RunConfig:
    """The resolved RunConfig of ``atzoo train`` (recipe < flags < ``section.key=value``);
    ``options`` are those of :func:`resolve_train_config`.

    Raises:
        ConfigError: the recipe or an override names another method than ``method``.
    """
    return resolve_train_config(method, **options).config


def resolve_train_config(
    method: str,
    *,
    model: str | None = None,
    dataset: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    recipe: Path | None = None,
    overrides: list[str] | None = None,
    auto_recipe: bool = False,
) -> Resolution:
    """:func:`make_config` with the source of every value (and the recipe used).

    Args:
        auto_recipe: without ``recipe``, start from the shipped recipe of (method,
            dataset, model) when there is one (:func:`atzoo.recipes.default_recipe`);
            otherwise the method's paper defaults are the base.
    """
    named = recipe_method(recipe)
    if named is not None and named != method:
        raise ConfigError(f"recipe {recipe} is for method '{named}', not '{method}'; use 'atzoo train {named}'")
    if recipe is None and auto_recipe:
        recipe = shipped_recipe(method, model, dataset, list(overrides or []))
    resolution = resolve_config(
        recipe, list(overrides or []),
        method={"name": method}, model={"name": model}, data={"name": dataset, "batch_size": batch_size},
        optim={"epochs": epochs}, run={"seed": seed},
    )
    if resolution.config.method.name != method:
        raise ConfigError(f"method.name={resolution.config.method.name} contradicts the command's method '{method}'")
    return resolution


def shipped_recipe(method: str, model: str | None, dataset: str | None, overrides: list[str]) -> Path | None:
    """The shipped recipe for the command's (method, dataset, model), the names taken from
    the flags or from ``data.name=``/``model.name=`` overrides (the last one wins)."""
    from atzoo.config import DataConfig, ModelConfig
    from atzoo.recipes import default_recipe

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


def summary_line(eval_payload: dict[str, Any]) -> str:
    """``clean 81.20  pgd20 43.10  autoattack 40.20  (the same 1000 test images)`` (percent)
    from eval.json's accuracies, which are all measured on one set of images."""
    names = (("clean_acc", "clean"), ("pgd20_acc", "pgd20"), ("autoattack_acc", "autoattack"))
    line = "  ".join(f"{label} {eval_payload[key]:.2f}" for key, label in names
                     if isinstance(eval_payload.get(key), (int, float)))
    n = eval_payload.get("n_examples")
    return f"{line}  (the same {n} test images)" if isinstance(n, int) and line else line


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
        recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML recipe file."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<name>)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
        force: bool = typer.Option(False, "--force", help="Replace an existing run directory."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the newest good checkpoint."),
        print_config: bool = typer.Option(
            False, "--print-config", help="Print the resolved config (with each value's source) and exit."
        ),
    ) -> None:
        """Train a robust classifier; writes config, metrics, checkpoints, model and eval.json.

        Without --recipe, the shipped recipe of (METHOD, --dataset, --model) is used when
        there is one; otherwise the method's own paper defaults.
        """
        import json

        resolution = resolve_train_config(method, model=model, dataset=dataset, epochs=epochs,
                                          batch_size=batch_size, seed=seed, recipe=recipe, overrides=overrides,
                                          auto_recipe=True)
        if print_config:
            typer.echo(annotated_yaml(resolution), nl=False)
            return
        from atzoo.engine import train

        cfg = resolution.config
        flags = {"--model": model, "--dataset": dataset, "--epochs": epochs, "--batch-size": batch_size,
                 "--recipe": recipe, "--seed": seed}
        try:
            run_dir = train(cfg, out=out, force=force, resume=resume,
                            notes=announce(resolution, explicit=recipe is not None))
        except InterruptedRun as exc:
            raise interrupted(exc, [method, *_flag_args(flags), *(overrides or [])]) from None
        from accelerate import PartialState

        if not PartialState().is_main_process:
            return
        console = Console()
        console.print(f"run directory: {run_dir}", highlight=False, soft_wrap=True)
        eval_file = run_dir / "eval.json"
        if cfg.run.evaluate and eval_file.is_file():
            console.print(f"eval: {summary_line(json.loads(eval_file.read_text()))}", highlight=False)
