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

from atzoo.config import RunConfig, build_config, load_recipe
from atzoo.errors import ConfigError, InterruptedRun


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
    named = recipe_method(recipe)
    if named is not None and named != method:
        raise ConfigError(f"recipe {recipe} is for method '{named}', not '{method}'; use 'atzoo train {named}'")
    cfg = build_config(
        recipe, list(overrides or []),
        method={"name": method}, model={"name": model}, data={"name": dataset, "batch_size": batch_size},
        optim={"epochs": epochs}, run={"seed": seed},
    )
    if cfg.method.name != method:
        raise ConfigError(f"method.name={cfg.method.name} contradicts the command's method '{method}'")
    return cfg


def summary_line(eval_payload: dict[str, Any]) -> str:
    """``clean 81.20  pgd20 43.10  autoattack 40.20`` (percent) from eval.json's accuracies."""
    names = (("clean_acc", "clean"), ("pgd20_acc", "pgd20"), ("autoattack_acc", "autoattack"))
    return "  ".join(f"{label} {eval_payload[key]:.2f}" for key, label in names
                     if isinstance(eval_payload.get(key), (int, float)))


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
    ) -> None:
        """Train a robust classifier; writes config, metrics, checkpoints, model and eval.json."""
        import json

        from atzoo.engine import train

        cfg = make_config(method, model=model, dataset=dataset, epochs=epochs, batch_size=batch_size, seed=seed,
                          recipe=recipe, overrides=overrides)
        flags = {"--model": model, "--dataset": dataset, "--epochs": epochs, "--batch-size": batch_size,
                 "--recipe": recipe, "--seed": seed}
        try:
            run_dir = train(cfg, out=out, force=force, resume=resume)
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
