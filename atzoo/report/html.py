"""A standalone ``leaderboard.html``: inline CSS and JavaScript, no network needed.

Every table sorts when a header is clicked (or focused and Enter pressed): numeric
columns sort best-first on the first click (descending), text columns A-Z; a second
click reverses; missing values stay last. Each numeric cell carries its machine value
in ``data-sort`` so ``83.77 ± 0.12`` sorts as 83.77.

Below the tables, a collapsed "Settings of METHOD" section per method of the page shows
its ledger (``atzoo docs METHOD --settings``, same rows: :func:`atzoo.ledger.settings_rows`);
each row's label links to its section.

Self-test hook: opened as ``leaderboard.html#selftest``, the page clicks headers of
its first table itself (after opening every settings section, so that the layout
check measures their tables too) and writes the resulting row orders as JSON into
``<pre id="selftest-result">``; ``tests/test_html_browser.py`` reads it from a headless
Chromium's ``--dump-dom``.
"""

from __future__ import annotations

import base64
import html
import json
import os
from functools import lru_cache
from pathlib import Path

from atzoo.errors import AtzooError
from atzoo.report.leaderboard import Entry, Group, Leaderboard
from atzoo.report.render import UNRANKED_MARK, cells, columns, sort_values

_NUMERIC = {"rank", "seeds", "clean", "pgd20", "autoattack", "worst_case", "score", "seconds_per_epoch", "cost_vs_at",
            "measured_vs_at", "pareto"}

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 80rem;
       padding: 0 1rem; color: #1d232a; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.table-scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
th, td { padding: .35rem .6rem; border-bottom: 1px solid #d8dee4; text-align: right; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; min-width: 3.5rem; }
td.label { white-space: normal; min-width: 11rem; }
@media (max-width: 900px) {
  body { font-size: 13px; margin: 1rem auto; padding: 0 .5rem; }
  th, td { padding: .3rem .35rem; }
}
th { background: #f3f5f7; cursor: pointer; user-select: none; position: relative; }
th:focus { outline: 2px solid #4a90d9; }
th[data-type="text"], td[data-type="text"] { text-align: left; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
tr.paper td { color: #5b6570; font-style: italic; background: #fbfaf3; }
tr.pareto td.label { font-weight: 600; }
img.figure { max-width: 100%; height: auto; border: 1px solid #d8dee4; }
span.runs { font-size: .85em; } span.runs a { color: #2f6fb3; }
.note { color: #5b6570; margin: .2rem 0; } .separation { background: #fff6d6; padding: .6rem .8rem; }
details.settings { margin: .4rem 0; } details.settings summary { cursor: pointer; font-weight: 600; }
/* The ledger's sources and notes are long prose: the columns share the width and wrap. */
table.settings { table-layout: fixed; font-size: .9em; }
table.settings th, table.settings td { white-space: normal; overflow-wrap: anywhere; text-align: left; cursor: auto;
  vertical-align: top; min-width: 0; }
table.settings col.setting { width: 16%; } table.settings col.value { width: 10%; }
table.settings col.source { width: 36%; } table.settings col.note { width: 28%; }
"""

_JS = """
(function () {
  "use strict";
  function cellValue(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell.getAttribute("data-sort");
    if (raw === null || raw === "") { return null; }
    return numeric ? parseFloat(raw) : raw.toLowerCase();
  }
  function sortBy(table, col, direction) {
    var th = table.tHead.rows[0].cells[col];
    var numeric = th.getAttribute("data-type") === "number";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var sign = direction === "ascending" ? 1 : -1;
    rows.sort(function (a, b) {
      var x = cellValue(a, col, numeric), y = cellValue(b, col, numeric);
      if (x === null && y === null) { return 0; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      return x < y ? -sign : (x > y ? sign : 0);
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) {
      other.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", direction);
  }
  function onHeader(table, col) {
    var th = table.tHead.rows[0].cells[col];
    var current = th.getAttribute("aria-sort");
    var first = th.getAttribute("data-type") === "number" ? "descending" : "ascending";
    var next = current === null ? first : (current === "ascending" ? "descending" : "ascending");
    sortBy(table, col, next);
  }
  function labels(table) {
    return Array.prototype.map.call(table.tBodies[0].rows, function (row) { return row.getAttribute("data-label"); });
  }
  function headerFor(table, key) {
    return Array.prototype.filter.call(table.tHead.rows[0].cells, function (th) {
      return th.getAttribute("data-key") === key;
    })[0];
  }
  var tables = document.querySelectorAll("table.leaderboard");
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { onHeader(table, col); });
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); onHeader(table, col); }
      });
    });
  });
  // A link to a settings section opens it (the sections are collapsed).
  function openTarget() {
    var target = window.location.hash.length > 1 ? document.getElementById(window.location.hash.slice(1)) : null;
    if (target && target.tagName === "DETAILS") { target.open = true; }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();
  if (window.location.hash === "#selftest" && tables.length > 0) {
    // Open every settings section first, so that the layout check covers their tables too.
    Array.prototype.forEach.call(document.querySelectorAll("details.settings"), function (d) { d.open = true; });
    var table = tables[0];
    var result = { tables: tables.length, rows: table.tBodies[0].rows.length, initial: labels(table) };
    // Layout: the page never runs past the window; each table's box reaches its last column.
    result.layout = { viewport: document.documentElement.clientWidth,
      page: document.documentElement.scrollWidth,
      tables: Array.prototype.map.call(document.querySelectorAll("table.leaderboard, table.settings"), function (t) {
        var box = t.parentNode, last = t.tHead.rows[0].cells[t.tHead.rows[0].cells.length - 1];
        return { box_right: box.getBoundingClientRect().right, box_scroll: box.scrollWidth,
                 table_width: t.getBoundingClientRect().width, scrolls: box.scrollWidth > box.clientWidth,
                 overflow_x: window.getComputedStyle(box).overflowX,
                 last_right: last.getBoundingClientRect().right - box.getBoundingClientRect().left }; }) };
    headerFor(table, "clean").click();
    result.clean_first_click = labels(table);
    result.clean_first_sort = headerFor(table, "clean").getAttribute("aria-sort");
    headerFor(table, "clean").click();
    result.clean_second_click = labels(table);
    headerFor(table, "label").click();
    result.label_click = labels(table);
    var out = document.getElementById("selftest-result");
    out.textContent = JSON.stringify(result);
  }
})();
"""


def _attr(value: object) -> str:
    return html.escape(str(value), quote=True)


def _sort_attr(value: float | str | None) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def _config_links(entry: Entry, out_dir: Path | None) -> str:
    """Links from the label to each run's ``config.yaml`` (relative to the page's folder)."""
    if out_dir is None:
        return ""
    links = []
    for number, run in enumerate(entry.runs, 1):
        config = Path(run.path) / "config.yaml"
        if config.is_file():
            target = Path(os.path.relpath(config.resolve(), Path(out_dir).resolve())).as_posix()
            text = "config" if len(entry.runs) == 1 else f"seed {run.seed if run.seed is not None else number}"
            links.append(f'<a href="{_attr(target)}" title="{_attr(run.path)}">{html.escape(text)}</a>')
    return f' <span class="runs">({", ".join(links)})</span>' if links else ""


def _settings_link(anchor: str | None) -> str:
    """A link from a row's label to its method's settings section (``#settings-...``)."""
    return f' <span class="runs">(<a href="#{_attr(anchor)}">settings</a>)</span>' if anchor else ""


def _row(entry: Entry, out_dir: Path | None = None, shown: tuple[tuple[str, str], ...] = (),
         anchor: str | None = None) -> str:
    text = cells(entry)
    values = sort_values(entry)
    classes = " ".join(c for c in (entry.kind, "pareto" if entry.pareto else "") if c)
    tds = []
    hover = {"cost_vs_at": entry.cost_note or entry.cost_source, "measured_vs_at": entry.measured_source,
             "rank": f"not ranked: {entry.unranked_reason}" if entry.unranked_reason else None}
    for key, _ in shown:
        kind = "number" if key in _NUMERIC else "text"
        tip = f' title="{_attr(hover[key])}"' if hover.get(key) else ""
        links = _config_links(entry, out_dir) + _settings_link(anchor) if key == "label" else ""
        tds.append(f'<td class="{key}" data-type="{kind}" data-sort="{_attr(_sort_attr(values[key]))}"{tip}>'
                   f"{html.escape(text[key])}{links}</td>")
    # Hovering a row shows where it came from: the paper, or the runs' provenance.
    about = entry.source or (entry.provenance_text() if entry.kind == "measured" else "")
    title = f' title="{_attr(about)}"' if about else ""
    return f'<tr class="{classes}" data-label="{_attr(entry.label)}"{title}>' + "".join(tds) + "</tr>"


def _table(group: Group, out_dir: Path | None = None, anchors: dict[int, str] | None = None) -> str:
    shown = columns(group)
    heads = "".join(
        f'<th scope="col" data-key="{key}" data-type="{"number" if key in _NUMERIC else "text"}">'
        f"{html.escape(header)}</th>"
        for key, header in shown
    )
    rows = "\n".join(_row(e, out_dir, shown, (anchors or {}).get(id(e))) for e in group.entries)
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in group.notes)
    # The scroll box: a table wider than the window scrolls sideways inside the page
    # instead of running past its right edge, where the last columns were cut off.
    return (f"<h2>{html.escape(group.title)}</h2>\n<div class=\"table-scroll\"><table class=\"leaderboard\">"
            f"<thead><tr>{heads}</tr></thead>\n<tbody>\n{rows}\n</tbody></table></div>\n{notes}")


def _figures(figures: dict[str, bytes]) -> str:
    """Each PNG inline as a data URI (the page needs no other file)."""
    return "\n".join(
        f'<h2>{html.escape(title)}</h2>\n<img class="figure" alt="{_attr(title)}" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'
        for title, data in figures.items()
    )


def _settings_anchor(method: str, recipe: str) -> str:
    return "settings-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in f"{method}-{recipe}")


@lru_cache(maxsize=256)
def _shipped_recipe(method: str, dataset: str, model: str) -> Path | None:
    """The shipped recipe of a setting (cached: finding it reads every recipe file)."""
    from atzoo.config.recipes import default_recipe

    return default_recipe(method, dataset, model)


def settings_recipes(board: Leaderboard) -> dict[tuple[str, str], tuple[Path, list[Entry]]]:
    """``(method, recipe name) -> (recipe file, the page's entries it describes)``.

    A run directory records its resolved config, not the recipe it started from, so a
    measured entry is described by the shipped recipe of its runs' (method, dataset, model)
    (the recipe ``atzoo train`` picks for that setting); a paper row, or a run whose
    setting has no shipped recipe, by the method's default ledger (the recipe
    ``atzoo docs METHOD --settings`` shows). Methods without a ledger are left out.
    """
    from atzoo.ledger import ledger_names, recipe_name, settings_recipe

    found: dict[tuple[str, str], tuple[Path, list[Entry]]] = {}
    with_ledger = set(ledger_names())
    for group in board.groups:
        for entry in group.entries:
            if entry.method not in with_ledger:
                continue
            config = entry.runs[0].config if entry.runs else {}
            path = None
            if config.get("data.name") and config.get("model.name"):
                path = _shipped_recipe(entry.method, str(config["data.name"]), str(config["model.name"]))
            try:
                path = path or settings_recipe(entry.method)
            except AtzooError:  # no shipped recipe at all: nothing to trace
                continue
            found.setdefault((entry.method, recipe_name(path)), (path, []))[1].append(entry)
    return found


def _run_differences(report_rows: list[tuple[object, object]], entries: list[Entry]) -> list[str]:
    """``key=value`` of the page's runs where their config.yaml differs from the recipe's value."""
    from atzoo.ledger import BEHAVIOUR_PREFIX, format_value, values_equal

    differ: dict[str, list[str]] = {}  # "key=value" -> the runs that hold it, in page order
    for ledger_entry, value in report_rows:
        key = ledger_entry.key  # type: ignore[attr-defined]
        if key.startswith(BEHAVIOUR_PREFIX):
            continue
        for run in (r for e in entries for r in e.runs):
            if key in run.config and not values_equal(run.config[key], value):
                names = differ.setdefault(f"{key}={format_value(run.config[key])}", [])
                if Path(run.path).name not in names:
                    names.append(Path(run.path).name)
    return [f"{text} (run{'s' if len(names) > 1 else ''} {', '.join(names)})" for text, names in differ.items()]


def _settings_section(method: str, path: Path, entries: list[Entry]) -> str:
    """One collapsed ``setting | atzoo | official | source | note`` table, the rows of
    ``atzoo docs METHOD --settings --recipe NAME`` (:func:`atzoo.ledger.settings_rows`)."""
    from atzoo.ledger import check_recipe, settings_rows

    report = check_recipe(path)
    labels = sorted({e.label for e in entries})
    heads = "".join(f'<th scope="col">{name}</th>' for name in ("setting", "atzoo", "official", "source", "note"))
    cols = ('<colgroup><col class="setting"><col class="value"><col class="value"><col class="source">'
            '<col class="note"></colgroup>')
    rows = "\n".join("<tr>" + "".join(f"<td>{html.escape(row[k])}</td>" for k in
                                      ("setting", "atzoo", "official", "source", "note")) + "</tr>"
                     for row in settings_rows(report))
    notes = [f"Rows: {', '.join(labels)}. Ledger atzoo/ledger/{method}.yaml for recipe {report.recipe}; "
             f"the same table as 'atzoo docs {method} --settings --recipe {report.recipe}'."]
    differ = _run_differences(report.rows, entries)
    if differ:
        notes.append("The runs' config.yaml differs from this recipe at: " + "; ".join(differ) + ".")
    if report.problems:
        notes.append("Not fully traced: " + "; ".join(report.problems))
    text = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return (f'<details class="settings" id="{_attr(_settings_anchor(method, report.recipe))}">'
            f"<summary>Settings of {html.escape(method)} (recipe {html.escape(report.recipe)})</summary>\n{text}"
            f'<div class="table-scroll"><table class="settings">{cols}<thead><tr>{heads}</tr></thead>\n'
            f"<tbody>\n{rows}\n</tbody></table></div></details>")


def _settings(recipes: dict[tuple[str, str], tuple[Path, list[Entry]]]) -> str:
    """Every method of the page with its settings ledger, collapsed under one heading."""
    sections = [_settings_section(method, path, entries) for (method, _), (path, entries) in sorted(recipes.items())]
    if not sections:
        return ""
    return ('<h2 id="settings">Settings</h2>\n<p class="note">Where each setting of each method comes from: '
            "atzoo's value, the official value, its source (paper or official code), and the reason for each "
            "deviation.</p>\n" + "\n".join(sections))


def to_html(board: Leaderboard, *, figures: dict[str, bytes] | None = None, out_dir: str | Path | None = None) -> str:
    """The standalone page (UTF-8, no external resources).

    Args:
        board: the leaderboard.
        figures: title -> PNG data, embedded below the tables (trade-off plot, curves).
        out_dir: the folder the page is written to; each row then links to its runs'
            ``config.yaml`` by a relative path.
    """
    from atzoo import __version__

    separation = "".join(f'<p class="separation">{html.escape(note)}</p>'
                         for note in (board.separation_note, board.machines_note) if note)
    folder = Path(out_dir) if out_dir is not None else None
    recipes = settings_recipes(board)
    anchors = {id(e): _settings_anchor(method, recipe) for (method, recipe), (_, entries) in recipes.items()
               for e in entries}
    tables = ("\n".join(_table(g, folder, anchors) for g in board.groups) + "\n" + _figures(figures or {}) + "\n"
              + _settings(recipes))
    # Raw text inside <script>: only "</" could end the element early, so escape it.
    data = json.dumps(board.to_dict()).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>atzoo leaderboard</title>
<style>{_CSS}</style>
</head>
<body>
<h1>atzoo leaderboard</h1>
<p class="note">Mean ± sample std over seeds. AA is standard AutoAttack alone and PGD-20 is PGD-20 alone, on the
same images. Ranked by clean + AA; entries without AutoAttack are listed after the ranked ones, marked {UNRANKED_MARK}.
x AT (passes) is the pass-count ratio of a training step to AT. Hover a row for its provenance (weights, training
data, commit, host). Click a column header to sort. Generated by atzoo {html.escape(__version__)}.</p>
{separation}
{tables}
<pre id="selftest-result" hidden></pre>
<script type="application/json" id="leaderboard-data">{data}</script>
<script>{_JS}</script>
</body>
</html>
"""
