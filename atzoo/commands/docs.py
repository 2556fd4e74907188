"""``atzoo docs [METHOD]``: a method's zoo card in the terminal (or the list of cards)."""

from __future__ import annotations

import difflib
import re
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.markdown import Markdown
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from atzoo.report.cards import Card, card_names, load_card
from atzoo.errors import AtzooError


def _known_names() -> list[str]:
    """Registered methods and cards (a card may exist before its method registers)."""
    from atzoo.registry import list_methods

    return sorted(set(list_methods()) | set(card_names()))


def _unknown(name: str) -> AtzooError:
    names = _known_names()
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return AtzooError(f"unknown method '{name}'.{hint} Valid choices: {', '.join(names)}")


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, bool)) or value is None:
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()
    return str(value)


def card_header(card: Card) -> Table:
    """The front matter as a two-column table (paper, loss, defaults, reported numbers, where
    they come from, and the reported training cost)."""
    meta = card.meta
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    authors = meta.get("authors")
    rows = [
        ("paper", meta.get("paper")),
        ("authors", ", ".join(authors) if isinstance(authors, list) else authors),
        ("venue", f"{meta.get('venue')} {meta.get('year')}" if meta.get("venue") else None),
        ("arXiv", meta.get("arxiv")),
        ("loss", meta.get("loss")),
        ("attack", meta.get("training_attack")),
        ("defaults", meta.get("defaults") or "(none beyond the training attack)"),
    ]
    for label, value in rows:
        if value not in (None, ""):
            table.add_row(label, _fmt(value))
    variants: list[str] = []
    for result in card.paper_results():
        if result.when:
            variants += [] if result.label in variants else [result.label]
            continue
        numbers = ", ".join(f"{k} {getattr(result, k):.2f}" for k in ("clean", "pgd20", "autoattack")
                            if getattr(result, k) is not None)
        table.add_row("reported", f"{result.setting}: {numbers}")
    if meta.get("reported_source"):
        table.add_row("source", str(meta["reported_source"]))
    for setting, cost in (meta.get("reported_cost") or {}).items():
        table.add_row("reported cost", f"{setting}: {_cost_text(cost)}")
    if variants:
        table.add_row("variants", "; ".join(variants) + " (reported numbers in the card's front matter)")
    return table


def _cost_text(cost: Any) -> str:
    """``0.140 s/batch, 1.15x AT (one A100, batch 128 (AR-AT paper))`` from a ``reported_cost`` entry."""
    if not isinstance(cost, dict):
        return _fmt(cost)
    parts = []
    if cost.get("seconds_per_batch") is not None:
        parts.append(f"{cost['seconds_per_batch']} s/batch")
    if cost.get("relative_to_at") is not None:
        parts.append(f"{cost['relative_to_at']}x AT")
    text = ", ".join(parts) or _fmt(cost)
    return f"{text} ({cost['hardware']})" if cost.get("hardware") else text


def card_cards_table() -> Table:
    """Every card with its title and paper."""
    table = Table(title="atzoo zoo cards (atzoo docs METHOD)")
    table.add_column("method", style="bold cyan")
    table.add_column("title")
    table.add_column("paper")
    for name in card_names():
        card = load_card(name)
        table.add_row(name, card.title, f"{card.meta.get('venue') or ''} {card.meta.get('year') or ''}".strip())
    return table


def docs_command(
    method: Optional[str] = typer.Argument(None, help="A method name (see 'atzoo list methods').", show_default=False),
) -> None:
    """Show a method's zoo card: paper, loss, defaults, reported numbers, and how it works."""
    console = Console()
    if method is None:
        console.print(card_cards_table())
        return
    if method not in card_names():
        from atzoo.registry import list_methods

        if method in list_methods():
            raise AtzooError(f"method '{method}' has no zoo card; add zoo_cards/{method}.md (see docs/add_a_method.md)")
        raise _unknown(method)
    card = load_card(method)
    console.print(Panel(card_header(card), title=f"{card.title} ({card.name})", expand=False))
    print_markdown(console, card.body)


#: A fenced code block: opening fence with an optional language, the code, closing fence.
_FENCE = re.compile(r"^(?P<fence>```|~~~)[^\n]*\n(?P<code>.*?)^(?P=fence)[ \t]*$\n?", re.MULTILINE | re.DOTALL)


def print_markdown(console: Console, text: str) -> None:
    """Markdown through rich, except fenced code blocks, which are printed unwrapped.

    rich wraps code blocks at the terminal width, which breaks formulas and commands
    across lines; here each code line is written whole (the terminal may still fold it
    on screen, but copying it gives the original line).
    """
    position = 0
    for match in _FENCE.finditer(text):
        if text[position:match.start()].strip():
            console.print(Markdown(text[position:match.start()]))
        console.print()
        for line in match.group("code").rstrip("\n").splitlines():
            console.print(Text("    " + line, style="cyan"), soft_wrap=True)
        console.print()
        position = match.end()
    if text[position:].strip():
        console.print(Markdown(text[position:]))


def register(app: typer.Typer) -> None:
    app.command("docs")(docs_command)
