"""The generated parts of ``docs/reproduction.md``: the tables, presets and estimates, as the tool prints them.

Each generated part sits between ``<!-- BEGIN generated: NAME -->`` and
``<!-- END generated: NAME -->``; :func:`update_doc` rewrites them, and
``tests/test_reproduce.py`` fails when the page and the tool disagree (the page's
``--list`` block equals ``atzoo reproduce --list`` at 100 columns; its plan lines equal the
summary line of ``atzoo reproduce TABLE --plan``). Regenerate with::

    python -m atzoo.commands.reproduce_doc            # rewrites docs/reproduction.md in a checkout
"""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path

#: The width the ``--list`` block is printed at (``COLUMNS=100 atzoo reproduce --list``).
LIST_WIDTH = 100
#: ``--plan`` commands whose summary line the page quotes: (table, rows, seeds, scale).
PLANS: tuple[tuple[str, list[str] | None, list[int] | None, str | None], ...] = (
    ("ar-at-table3", None, None, None),
    ("ar-at-table4", None, None, None),
    ("ar-at-table3", ["cifar10-resnet18/*"], [0, 1], "gpu-hour"),
)
DOC = Path(__file__).resolve().parents[2] / "docs" / "reproduction.md"
_BLOCK = re.compile(r"(<!-- BEGIN generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END generated: (?P=name) -->)", re.S)


def list_text(width: int = LIST_WIDTH) -> str:
    """``atzoo reproduce --list`` as plain text at ``width`` columns."""
    from rich.console import Console

    from atzoo.commands.reproduce import print_list

    buffer = io.StringIO()
    print_list(Console(file=buffer, width=width, color_system=None, force_terminal=False))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def plan_command(table: str, rows: list[str] | None, seeds: list[int] | None, scale: str | None) -> str:
    parts = [f"atzoo reproduce {table} --plan"]
    parts += [f"--rows '{r}'" for r in rows or []]
    parts += [f"--seeds {','.join(map(str, seeds))}"] if seeds else []
    parts += [f"--scale {scale}"] if scale else []
    return " ".join(parts)


def plan_summary(table: str, rows: list[str] | None = None, seeds: list[int] | None = None,
                 scale: str | None = None) -> str:
    """The summary line of ``atzoo reproduce TABLE --plan`` with nothing run yet."""
    from atzoo.commands.reproduce import summary_line
    from atzoo.reproduce import prepare, states
    from atzoo.reproduce.cost import estimate_runs

    with tempfile.TemporaryDirectory() as empty:
        session = prepare(table, rows=rows, seeds=seeds, scale=scale, out=Path(empty) / "runs")
        return summary_line(session, states(session), estimate_runs(session.planned))


def cost_table() -> str:
    """Markdown: estimated A100 hours of one run of each method of Table 3 and Table 4."""
    from atzoo.reproduce import prepare
    from atzoo.reproduce.cost import estimate_runs

    hours: dict[str, dict[str, float]] = {}
    epochs: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as empty:
        for table, rows in (("ar-at-table3", ["cifar10-resnet18/*", "cifar10-wrn34_10/*"]), ("ar-at-table4", None)):
            session = prepare(table, rows=rows, seeds=[0], out=Path(empty) / table)
            for run, estimate in zip(session.planned, estimate_runs(session.planned)):
                setting, key = run.row.id.split("/", 1)
                hours.setdefault(key, {})[setting] = estimate.seconds / 3600
                epochs.setdefault(key, run.config.optim.epochs)
    columns = ["cifar10-resnet18", "cifar10-wrn34_10", "imagenette-resnet18"]
    lines = ["| row | recipe epochs | CIFAR ResNet-18 run (est.) | CIFAR WRN-34-10 run (est.) | Imagenette ResNet-18 run (est.) |",
             "|---|---|---|---|---|"]
    for key, by_setting in hours.items():
        cells = [f"{by_setting[c]:.1f} h" if c in by_setting else "—" for c in columns]
        lines.append(f"| {key} | {epochs[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def blocks() -> dict[str, str]:
    """Every generated block of the page, by name."""
    plans = "".join(f"$ {plan_command(*p)}\n... {plan_summary(*p)}\n" for p in PLANS)
    return {
        "reproduce-list": f"```text\n$ COLUMNS={LIST_WIDTH} atzoo reproduce --list\n{list_text()}```\n",
        "reproduce-plans": f"```text\n{plans}```\n",
        "cost-table": cost_table(),
    }


def doc_blocks(text: str) -> dict[str, str]:
    """The generated blocks as they stand in a page's text."""
    return {m.group("name"): m.group("body") for m in _BLOCK.finditer(text)}


def render(text: str, generated: dict[str, str]) -> str:
    """``text`` with each generated block replaced by ``generated[name]``."""
    return _BLOCK.sub(lambda m: m.group(1) + generated.get(m.group("name"), m.group("body")) + m.group(4), text)


def update_doc(path: Path = DOC) -> bool:
    """Rewrites the generated blocks of ``path``; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    new = render(text, blocks())
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    print(f"{DOC}: {'updated' if update_doc() else 'already up to date'}")
