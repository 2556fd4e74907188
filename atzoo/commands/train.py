"""``atzoo train METHOD``: the command's arguments and what it prints.

Example::

    atzoo train at --model resnet18 --dataset cifar10 --epochs 100 attack.eps=8/255
    atzoo train arat --recipe arat_cifar10_resnet18 method.split_bn=false   # runs/<name>-<hash>
    atzoo train arat --resume --out runs/arat-resnet18-cifar10-s0 --epochs 120

The run is planned by :func:`atzoo.engine.plan.plan_run` (the config with each value's
source, the run directory: ``runs/<name>``, plus a settings hash for an ablation) and run
by :func:`atzoo.engine.plan.run_plan`; this module parses the command line and prints.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from atzoo.config import annotated_yaml, read_config_file
from atzoo.errors import InterruptedRun


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
    (from its newest checkpoint, or from the start when it has none yet). SIGTERM (a
    scheduler's preemption) stops at a step boundary with a checkpoint and exit code 143:
    ``atzoo: stopped by SIGTERM after step K (checkpoint written); continue the run in DIR with: ...``. A run stopped
    before its first step left nothing (``--force``: the old run is back in place):
    ``atzoo: interrupted before the run started; nothing was changed in DIR``.
    """
    keep = {"signal_name": exc.signal_name, "exit_code": exc.exit_code, "checkpoint_step": exc.checkpoint_step}
    what = "interrupted" if exc.signal_name == "SIGINT" else f"stopped by {exc.signal_name}"
    if not exc.resumable:
        return InterruptedRun(f"{what} before the run started; nothing was changed in {exc.run_dir}", **keep)
    if exc.checkpoint_step is not None:  # SIGTERM: a checkpoint of the step it stopped at
        what += f" after step {exc.checkpoint_step} (checkpoint written)"
    command = shlex.join(["atzoo", "train", *args, "--resume", "--out", str(exc.run_dir)])
    return InterruptedRun(f"{what}; continue the run in {exc.run_dir} with: {command}", exc.run_dir, True, **keep)


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
        from atzoo.engine.plan import plan_run, run_plan

        given = {"model": model, "dataset": dataset, "epochs": epochs, "batch_size": batch_size, "seed": seed}
        if print_config:  # the config as resolved, before the run's name gets its settings hash
            plan = plan_run(method, recipe=recipe, overrides=overrides, auto_recipe=True, hash_name=False, **given)
            typer.echo(annotated_yaml(plan.resolution), nl=False)
            return

        flags = {"--model": model, "--dataset": dataset, "--epochs": epochs, "--batch-size": batch_size,
                 "--recipe": recipe, "--seed": seed}
        try:
            plan = plan_run(method, recipe=recipe, overrides=overrides, out=out, resume=resume, auto_recipe=True,
                            **given)
            run_dir = run_plan(plan, force=force)
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
            from atzoo.eval.results import read_eval_json

            console.print(f"eval: {summary_line(read_eval_json(eval_file))}", highlight=False)
