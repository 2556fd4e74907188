"""The ``atzoo`` command line: thin typer commands over library calls.

Conventions every command follows:

* Every error goes through :func:`error_exit`, the one place that turns an exception into
  the one line on stderr, ``atzoo: error: ...`` (bounded, without any library hint to
  switch a safety off): a user error (:class:`~atzoo.errors.AtzooError`, a usage error
  such as an unknown option) and an operating-system error (disk full, permission
  denied) exit with code 2, an interrupted run (Ctrl-C) with 130, anything else (a bug)
  with 1. ``ATZOO_DEBUG=1`` re-raises so the traceback shows.
* Commands live in ``atzoo/commands/<name>.py``, each exposing ``register(app)``;
  :data:`COMMAND_MODULES` lists them.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from typing import Any, Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from atzoo import __version__
from atzoo.errors import AtzooError, InterruptedRun, one_line

#: The first line of ``atzoo --help``; :func:`help_text` adds the registered methods.
HELP = "atzoo: an adversarial-training zoo for PyTorch."

app = typer.Typer(
    name="atzoo",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

#: Modules that add commands to ``app`` through their ``register(app)`` function.
COMMAND_MODULES: list[str] = ["atzoo.commands.bench", "atzoo.commands.compare", "atzoo.commands.docs", "atzoo.commands.eval", "atzoo.commands.export", "atzoo.commands.reproduce", "atzoo.commands.train"]

console = Console()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"atzoo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """atzoo: train, evaluate and compare adversarially robust classifiers."""


@app.command("list")
def list_entries(kind: str = typer.Argument(..., help="methods | models | datasets | attacks | recipes")) -> None:
    """List the registered methods, models, datasets or attacks, or the bundled recipes."""
    import difflib

    from atzoo.registry import REGISTRIES, get_registry, load_builtins

    if kind == "recipes":
        print_table(recipes_table())
        return
    if kind not in REGISTRIES:
        choices = [*REGISTRIES, "recipes"]
        close = difflib.get_close_matches(kind, choices, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise AtzooError(f"unknown registry '{kind}'.{hint} Valid choices: {', '.join(choices)}")
    registry = get_registry(kind)
    load_builtins()
    table = Table(title=f"atzoo {kind}", show_lines=False)
    table.add_column("name", style="bold cyan")
    table.add_column("description")
    for name, obj in registry.items():
        table.add_row(name, describe_entry(kind, name, obj))
    for prefix, help_text in registry.prefixes().items():
        table.add_row(f"{prefix}:...", help_text)
    print_table(table)


def print_table(table: Table) -> None:
    """A table on stdout; into a pipe or a file at its natural width, never cut to 80
    columns (``atzoo list recipes | grep imagenette`` must see whole names)."""
    if console.is_terminal:
        console.print(table)
    else:  # rich would fold or cut every column to fit 80 characters
        Console(width=max(console.width, 1000), no_color=True).print(table, crop=False)


def recipes_table() -> Table:
    """The bundled recipes: name (for ``--recipe``), method, dataset, model, threat model."""
    from atzoo.config import load_recipe
    from atzoo.config.resources import list_recipes

    table = Table(title="atzoo recipes (atzoo train METHOD --recipe NAME)")
    table.add_column("name", style="bold cyan", no_wrap=True)
    for column in ("method", "dataset", "model", "attack"):
        table.add_column(column)
    for name in list_recipes():
        values = {k: v if isinstance(v, dict) else {} for k, v in load_recipe(name).items()}
        attack = values.get("attack", {})
        table.add_row(name, *(str(values.get(s, {}).get("name", "-")) for s in ("method", "data", "model")),
                      f"{attack.get('norm', 'linf')} eps={attack.get('eps', '-')}")
    return table


def describe_entry(kind: str, name: str, obj: object) -> str:
    """One line for ``atzoo list``: an entry's ``summary`` or its docstring's first line."""
    if kind == "models":
        from atzoo.models import describe_model

        return describe_model(name)
    summary = getattr(obj, "summary", "") or (obj.__doc__ or "").strip().splitlines()[0:1]
    return summary if isinstance(summary, str) else (summary[0] if summary else "")


def _click_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """``name`` from click and from the click copy that newer typer versions vendor."""
    classes: list[type[BaseException]] = [getattr(click.exceptions, name)]
    try:
        vendored = importlib.import_module("typer._click.exceptions")
        classes.append(getattr(vendored, name))
    except (ImportError, AttributeError):
        pass
    if name == "Exit":
        classes.append(typer.Exit)
    return tuple(dict.fromkeys(classes))


USAGE_ERRORS = _click_exceptions("UsageError")
EXITS = _click_exceptions("Exit")
ABORTS = _click_exceptions("Abort")


def _register_commands() -> None:
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(app)


def help_text() -> str:
    """``atzoo --help``'s description: :data:`HELP` and every registered method (a registry
    query, so a new method appears without editing this file)."""
    from atzoo.registry import list_methods

    return f"{HELP} Methods: {', '.join(list_methods())} ('atzoo list methods' describes them)."


def _wants_help(argv: list[str]) -> bool:
    return not argv or bool({"-h", "--help"} & set(argv))


def _add_registered_names(command: Any) -> None:
    """Fills the help texts that name registered entries (only when help is shown: the
    registries import torch)."""
    command.help = help_text()
    train = getattr(command, "commands", {}).get("train")
    for param in getattr(train, "params", []):
        if param.name == "method" and getattr(param, "param_type_name", "") == "argument":
            from atzoo.registry import list_methods

            param.help = f"Training method: {', '.join(list_methods())}."  # type: ignore[attr-defined]


#: OS errors that only a write raises (a full disk, a quota, a read-only file system).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _fail(message: object, code: int = 2, prefix: str = "error: ") -> int:
    print(f"atzoo: {prefix}{one_line(message)}", file=sys.stderr)
    return code


def error_exit(exc: BaseException) -> int:
    """Prints the one line for ``exc`` and returns the exit code (see the module doc)."""
    if isinstance(exc, InterruptedRun):  # the resume command must survive whole
        print(f"atzoo: {one_line(exc, limit=10_000)}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, AtzooError):
        return _fail(str(exc), exc.exit_code)
    if isinstance(exc, USAGE_ERRORS):
        ctx = getattr(exc, "ctx", None)
        hint = f" (see 'atzoo {ctx.info_name} --help')" if ctx is not None and ctx.parent else " (see 'atzoo --help')"
        return _fail(exc.format_message() + hint)
    if isinstance(exc, (KeyboardInterrupt, *ABORTS)):
        return _fail("interrupted", 130, "")
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        verb = "write" if exc.errno in _WRITE_ERRNOS else "access"
        return _fail(f"cannot {verb}{where}: {exc.strerror or exc}")
    if isinstance(exc, MemoryError):
        return _fail("out of memory (a smaller data.batch_size or eval.batch_size may fit)")
    return _fail(f"unexpected {type(exc).__name__}: {exc} (a bug in atzoo; ATZOO_DEBUG=1 shows the traceback)", 1)


def run(argv: list[str] | None = None) -> int:
    """Runs the CLI on ``argv``; returns the exit code instead of exiting."""
    _register_commands()
    command = typer.main.get_command(app)
    if _wants_help(sys.argv[1:] if argv is None else list(argv)):
        _add_registered_names(command)
    debug = os.environ.get("ATZOO_DEBUG", "") not in ("", "0")
    try:
        result = command.main(args=argv, prog_name="atzoo", standalone_mode=False)
    except EXITS as exc:  # type: ignore[misc]
        return int(getattr(exc, "exit_code", 0) or 0)
    except USAGE_ERRORS as exc:  # type: ignore[misc]
        if type(exc).__name__ != "NoArgsIsHelpError":  # bare 'atzoo' (or 'atzoo bench'): help, exit 0
            if debug:
                raise
            return error_exit(exc)
        if exc.format_message().strip():  # typer's rich help has printed itself already
            print(exc.format_message())
        return 0
    except (Exception, KeyboardInterrupt) as exc:
        if debug:
            raise
        return error_exit(exc)
    return result if isinstance(result, int) else 0


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
