"""``reproduction.{md,json,html}`` and the trade-off plot of a (possibly partial) reproduction.

The per-row table (paper vs measured, difference, verdict) and the orderings are this
module's; the leaderboard of the measured runs, its HTML table and the trade-off plot
are atzoo's ``compare`` code (:mod:`atzoo.report`), so a reproduction reads like any
other comparison below its verdicts.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atzoo.report import prepare_out_dir
from atzoo.report.leaderboard import Leaderboard, Stat, build_leaderboard
from atzoo.reproduce.manifest import Table
from atzoo.reproduce.scale import Scale
from atzoo.reproduce.verdict import ClaimCheck, RowResult

#: The files a report writes (nothing else in the folder is touched).
REPORT_FILES: tuple[str, ...] = ("reproduction.md", "reproduction.json", "reproduction.html", "tradeoff.png")


@dataclass
class Reproduction:
    """Everything a report shows."""

    table: Table
    scale: Scale | None
    results: list[RowResult]
    claims: list[ClaimCheck]
    board: Leaderboard
    command: str = ""
    data: dict[str, str] = field(default_factory=dict)
    wall_seconds: float | None = None

    @property
    def banner(self) -> str:
        """The line every output starts with: full size or the scale preset."""
        if self.scale is None:
            return "Full-size reproduction: the table's recipes as published."
        stand_ins = "; ".join(f"{k} -> {v}" for k, v in self.data.items())
        extra = f"; data stand-ins: {stand_ins}" if stand_ins else ""
        return (f"SCALED reproduction ({self.scale.describe()}{extra}). Absolute numbers are not comparable "
                "to the paper's; the verdicts compare orderings and gaps.")

    @property
    def metrics(self) -> list[str]:
        return list(self.table.metrics) + [m for m in ("seconds_per_batch",)
                                          if any(m in r.row.paper for r in self.results)]


def _stat(stat: Stat | None, digits: int = 2) -> str:
    return "—" if stat is None else stat.text(digits)


def _num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _digits(metric: str) -> int:
    return 3 if metric in ("seconds_per_batch", "grad_sim", "cost_vs_at") else 2


def row_cells(result: RowResult, metrics: list[str], scaled: bool = False) -> list[str]:
    """Row label, seeds, then paper / measured / difference per metric, then the verdict.

    A scaled reproduction prints no difference: its absolute numbers are not the paper's.
    """
    cells = [result.row.id, result.row.label, f"{len(result.runs)}/{result.planned}"]
    for metric in metrics:
        d = _digits(metric)
        diff = "n/a (scaled)" if scaled else _num(result.difference(metric), d, signed=True)
        cells += [_num(result.row.paper.get(metric), d), _stat(result.measured.get(metric), d), diff]
    return cells + [result.verdict]


def header(metrics: list[str]) -> list[str]:
    cells = ["row", "label", "seeds"]
    for metric in metrics:
        cells += [f"{metric} paper", f"{metric} measured", "diff"]
    return cells + ["verdict"]


def claim_cells(check: ClaimCheck) -> list[str]:
    paper = {True: "holds", False: "does not hold", None: "no number"}[check.paper]
    return [check.setting, check.claim.text, check.claim.says, f"{paper} ({_num(check.paper_gap, signed=True)})",
            f"{check.outcome} ({_num(check.measured_gap, signed=True)})"]


CLAIM_HEADER = ["setting", "ordering", "meaning", "paper (gap)", "measured (gap)"]


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda t: str(t).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


def summary_counts(rep: Reproduction) -> dict[str, int]:
    """How many rows have each verdict, and how many orderings held."""
    counts: dict[str, int] = {}
    for result in rep.results:
        counts[result.verdict] = counts.get(result.verdict, 0) + 1
    measured = [c for c in rep.claims if c.measured is not None]
    counts["orderings measured"] = len(measured)
    counts["orderings held"] = sum(1 for c in measured if c.measured)
    return counts


def to_markdown(rep: Reproduction, tradeoff: str = "tradeoff.png") -> str:
    """``reproduction.md``."""
    from atzoo.report.render import to_markdown as leaderboard_markdown

    t = rep.table
    parts = [f"# Reproduction: {t.title}", "", f"**{rep.banner}**", "", f"Paper: {t.paper}. Source: {t.source}.", ""]
    if rep.command:
        parts += ["Command:", "", "```bash", rep.command, "```", ""]
    if rep.wall_seconds is not None:
        parts += [f"Wall time of the runs trained by this command: {rep.wall_seconds / 60:.1f} min.", ""]
    counts = ", ".join(f"{k}: {v}" for k, v in summary_counts(rep).items())
    parts += [f"Summary: {counts}.", "", "## Paper vs measured", "",
              "Measured: mean ± sample std over the finished seeds; diff = measured mean - paper "
              "(not given for a scaled reproduction).", "",
              _md_table(header(rep.metrics), [row_cells(r, rep.metrics, rep.scale is not None) for r in rep.results]), ""]
    if rep.claims:
        parts += ["## Orderings and gaps", "",
                  "Each ordering the paper's numbers show, checked on the measured means (gap = left - right).", "",
                  _md_table(CLAIM_HEADER, [claim_cells(c) for c in rep.claims]), ""]
    if t.notes or any(r.row.note for r in rep.results):
        parts += ["## Notes", ""] + [f"- {n}" for n in t.notes]
        parts += [f"- {r.row.id}: {r.row.note}" for r in rep.results if r.row.note] + [""]
    if rep.board.groups:
        parts += [f"## Measured runs (leaderboard)", "", f"![trade-off]({tradeoff})", "",
                  leaderboard_markdown(rep.board).split("\n", 1)[-1].strip(), ""]
    return "\n".join(parts)


def to_json(rep: Reproduction) -> str:
    """``reproduction.json``."""
    from atzoo import __version__

    payload: dict[str, Any] = {
        "atzoo_version": __version__, "table": rep.table.name, "title": rep.table.title, "paper": rep.table.paper,
        "source": rep.table.source, "scale": rep.scale.__dict__ if rep.scale else None, "banner": rep.banner,
        "data": rep.data, "command": rep.command, "wall_seconds": rep.wall_seconds,
        "summary": summary_counts(rep), "rows": [r.to_dict() for r in rep.results],
        "orderings": [c.to_dict() for c in rep.claims], "notes": list(rep.table.notes),
        "leaderboard": rep.board.to_dict(),
    }
    return json.dumps(payload, indent=2, sort_keys=False) + "\n"


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f'<th data-type="text">{html.escape(h)}</th>' for h in head)
    body = "\n".join("<tr>" + "".join(f'<td data-type="text">{html.escape(c)}</td>' for c in r) + "</tr>"
                     for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>\n{body}\n</tbody></table>"


def to_html(rep: Reproduction) -> str:
    """``reproduction.html``: this report's tables above the leaderboard page's own tables."""
    from atzoo.report.html import _CSS, _JS, _table  # the leaderboard page's style and sortable tables

    t = rep.table
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in t.notes)
    command = f"<pre>{html.escape(rep.command)}</pre>" if rep.command else ""
    claims = (f"<h2>Orderings and gaps</h2>{_html_table(CLAIM_HEADER, [claim_cells(c) for c in rep.claims])}"
              if rep.claims else "")
    boards = "\n".join(_table(g) for g in rep.board.groups)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(t.title)}</title><style>{_CSS}</style></head>
<body>
<h1>Reproduction: {html.escape(t.title)}</h1>
<p class="separation"><strong>{html.escape(rep.banner)}</strong></p>
<p class="note">Paper: {html.escape(t.paper)}. Source: {html.escape(t.source)}.</p>
{command}
<h2>Paper vs measured</h2>
{_html_table(header(rep.metrics), [row_cells(r, rep.metrics, rep.scale is not None) for r in rep.results])}
{claims}
<h2>Notes</h2><ul>{notes}</ul>
<h2>Measured runs</h2><img src="tradeoff.png" alt="clean vs robust accuracy" style="max-width: 100%">
{boards}
<script>{_JS}</script>
</body>
</html>
"""


def write_report(rep: Reproduction, out: str | Path) -> dict[str, Path]:
    """Writes :data:`REPORT_FILES` into ``out`` atomically; returns name -> path."""
    from atzoo.files.common import atomic_write_bytes, atomic_write_text

    folder = prepare_out_dir(out)
    written: dict[str, Path] = {}
    for name, text in (("reproduction.md", to_markdown(rep)), ("reproduction.json", to_json(rep)),
                       ("reproduction.html", to_html(rep))):
        atomic_write_text(folder / name, text)
        written[name] = folder / name
    if rep.board.groups:
        atomic_write_bytes(folder / "tradeoff.png", _plot(rep))
        written["tradeoff.png"] = folder / "tradeoff.png"
    return written


def _plot(rep: Reproduction) -> bytes:
    """The leaderboard's trade-off plot (PNG bytes), titled with the table and whether it is scaled."""
    import io

    from atzoo.report.plot import plot_tradeoff

    scale = f"SCALED ({rep.scale.name}): orderings only" if rep.scale else "full size"
    png = io.BytesIO()
    plot_tradeoff(rep.board, png, title=f"{rep.table.name}, {scale}\nrobust = AutoAttack (hollow circle: PGD-20 only)")
    return png.getvalue()


def leaderboard_of(results: list[RowResult], scaled: bool) -> Leaderboard:
    """The compare leaderboard of every finished run (paper rows only at full size).

    Measured entries are named after their table row (``AR-AT+SWA``, ``none (L_V0)``) rather
    than by the config keys that tell them apart.
    """
    runs = [run for r in results for run in r.runs]
    board = build_leaderboard(runs, paper=not scaled)
    label_of = {run.path: r.row.label for r in results for run in r.runs}
    for group in board.groups:
        for entry in group.measured:
            entry.label = label_of.get(entry.runs[0].path, entry.label) if entry.runs else entry.label
    return board
