"""Leaderboard as Markdown, CSV, JSON and rich tables (the HTML page is in ``html.py``)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich import box
from rich.console import Group as RichGroup
from rich.table import Table
from rich.text import Text

from atzoo.report.leaderboard import Entry, Group, Leaderboard, Stat
from atzoo.report.runs import PROVENANCE_KEYS

#: (key, header) of every displayed column, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("rank", "rank"),
    ("label", "method"),
    ("seeds", "seeds"),
    ("clean", "clean %"),
    ("pgd20", "PGD-20 %"),
    ("autoattack", "AA %"),
    ("worst_case", "worst case %"),
    ("score", "clean + AA"),
    ("seconds_per_epoch", "s / epoch"),
    ("cost_vs_at", "x AT (passes)"),
    ("measured_vs_at", "x AT (measured)"),
    ("pareto", "Pareto"),
)

#: Marks an entry listed after the ranked ones (no AutoAttack for every seed).
UNRANKED_MARK = "†"


def columns(group: Group, all_columns: tuple[tuple[str, str], ...] = COLUMNS) -> tuple[tuple[str, str], ...]:
    """The columns a group shows: worst case only where it differs from AA; measured cost
    only where some entry has one."""
    hidden = set()
    if not group.show_worst_case:
        hidden.add("worst_case")
    if not any(e.measured_vs_at is not None for e in group.entries):
        hidden.add("measured_vs_at")
    return tuple(c for c in all_columns if c[0] not in hidden)


def _stat(stat: Stat | None, digits: int = 2) -> str:
    return stat.text(digits) if stat is not None else "-"


def cells(entry: Entry) -> dict[str, str]:
    """The display text of each column for one entry."""
    paper = entry.kind == "paper"
    rank = "ref" if paper else (str(entry.rank) if entry.rank is not None else UNRANKED_MARK)
    return {
        "rank": rank,
        "label": entry.label + (f" {UNRANKED_MARK}" if entry.unranked_reason else ""),
        "seeds": "-" if paper else str(entry.seeds),
        "clean": _stat(entry.clean),
        "pgd20": _stat(entry.pgd20),
        "autoattack": _stat(entry.autoattack),
        "worst_case": _stat(entry.worst_case),
        "score": f"{entry.score:.2f}" if entry.score is not None else "-",
        "seconds_per_epoch": _stat(entry.seconds_per_epoch, 1),
        "cost_vs_at": (f"{entry.cost_vs_at:.2f}x" + (" (A100 time, paper)" if paper else ""))
        if entry.cost_vs_at is not None else "-",
        "measured_vs_at": f"{entry.measured_vs_at:.2f}x" if entry.measured_vs_at is not None else "-",
        "pareto": "yes" if entry.pareto else "",
    }


def sort_values(entry: Entry) -> dict[str, float | str | None]:
    """Machine values behind each column (numbers sort numerically in the HTML page)."""
    mean = lambda s: s.mean if s is not None else None  # noqa: E731
    return {
        "rank": float(entry.rank) if entry.rank is not None else None,
        "label": entry.label,
        "seeds": float(entry.seeds) if entry.kind == "measured" else None,
        "clean": mean(entry.clean),
        "pgd20": mean(entry.pgd20),
        "autoattack": mean(entry.autoattack),
        "worst_case": mean(entry.worst_case),
        "score": entry.score,
        "seconds_per_epoch": mean(entry.seconds_per_epoch),
        "cost_vs_at": entry.cost_vs_at,
        "measured_vs_at": entry.measured_vs_at,
        "pareto": 1.0 if entry.pareto else 0.0,
    }


# --------------------------------------------------------------------------- Markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def group_markdown(group: Group) -> str:
    """One group as a Markdown section: heading, table, notes."""
    shown = columns(group)
    lines = [f"## {group.title}", "", "| " + " | ".join(h for _, h in shown) + " |",
             "|" + "|".join("---" for _ in shown) + "|"]
    for entry in group.entries:
        row = cells(entry)
        if entry.kind == "paper":
            row["label"] = f"*{row['label']}*"
        lines.append("| " + " | ".join(_md_escape(row[k]) for k, _ in shown) + " |")
    lines.append("")
    lines.extend(f"- {note}" for note in group.notes)
    return "\n".join(lines).rstrip() + "\n"


def to_markdown(board: Leaderboard) -> str:
    """The whole leaderboard as Markdown."""
    parts = ["# atzoo leaderboard", "",
             "Mean ± sample std over seeds. AA = standard AutoAttack alone, PGD-20 = PGD-20 alone, on the same "
             "images. Ranked by clean + AA; entries without AutoAttack are listed after the ranked ones, marked "
             f"{UNRANKED_MARK}, never ranked among them. x AT (passes) = pass-count ratio of a training step to AT.",
             ""]
    if board.separation_note:
        parts += [f"> {board.separation_note}", ""]
    if board.machines_note:
        parts += [f"> {board.machines_note}", ""]
    parts += [group_markdown(g) for g in board.groups]
    return "\n".join(parts)


# --------------------------------------------------------------------------- CSV / JSON

CSV_FIELDS: tuple[str, ...] = (
    "dataset", "model", "norm", "eps", "rank", "label", "method", "kind", "seeds",
    "clean_mean", "clean_std", "pgd20_mean", "pgd20_std", "autoattack_mean", "autoattack_std",
    "worst_case_mean", "worst_case_std", "ranked", "unranked_reason",
    "robust_metric", "score", "seconds_per_epoch", "step_seconds_per_epoch", "step_seconds_basis",
    "cost_vs_at", "cost_kind", "cost_source", "cost_note", "measured_vs_at", "measured_source",
    "pareto", "source", "runs", "dataset_fingerprint",
    # provenance: distinct values over the entry's runs, ";"-joined ("?" = not recorded)
    "atzoo_version", "git_commit", "seed_values", "config_hash", "weights", "train_data", "host", "machine",
)


def _csv_row(group: Group, entry: Entry) -> dict[str, Any]:
    row: dict[str, Any] = {
        "dataset": group.dataset, "model": group.model, "norm": group.norm, "eps": group.eps,
        "rank": entry.rank, "label": entry.label, "method": entry.method, "kind": entry.kind,
        "seeds": entry.seeds, "robust_metric": entry.robust_metric, "score": entry.score,
        "ranked": entry.ranked, "unranked_reason": entry.unranked_reason,
        "measured_vs_at": entry.measured_vs_at, "measured_source": entry.measured_source,
        "seconds_per_epoch": entry.seconds_per_epoch.mean if entry.seconds_per_epoch else None,
        "step_seconds_per_epoch": entry.step_seconds.mean if entry.step_seconds else None,
        "step_seconds_basis": entry.step_basis,
        "cost_vs_at": entry.cost_vs_at, "cost_kind": entry.cost_kind, "cost_source": entry.cost_source,
        "cost_note": entry.cost_note, "pareto": entry.pareto, "source": entry.source,
        "runs": ";".join(str(r.path) for r in entry.runs), "dataset_fingerprint": group.dataset_fingerprint,
    }
    if entry.kind == "measured":
        for key in PROVENANCE_KEYS:
            row["seed_values" if key == "seed" else key] = ";".join(entry.provenance_values(key))
    for metric in ("clean", "pgd20", "autoattack", "worst_case"):
        stat: Stat | None = getattr(entry, metric)
        row[f"{metric}_mean"] = stat.mean if stat else None
        row[f"{metric}_std"] = stat.std if stat else None
    return row


def to_csv(board: Leaderboard) -> str:
    """One CSV row per entry of every group (empty cells for missing values)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for group in board.groups:
        for entry in group.entries:
            writer.writerow({k: ("" if v is None else v) for k, v in _csv_row(group, entry).items()})
    return buffer.getvalue()


def to_json(board: Leaderboard) -> str:
    return json.dumps(board.to_dict(), indent=2) + "\n"


# --------------------------------------------------------------------------- rich


#: Terminal columns (a subset, with short headers: the terminal is often 80 columns wide).
_TERMINAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rank", "#"), ("label", "method"), ("seeds", "n"), ("clean", "clean"), ("pgd20", "PGD-20"),
    ("autoattack", "AA"), ("worst_case", "worst"), ("score", "score"), ("seconds_per_epoch", "s/epoch"),
    ("cost_vs_at", "x AT"), ("measured_vs_at", "x AT meas."),
)


def _terminal_cells(entry: Entry) -> dict[str, str]:
    row = cells(entry)
    row["cost_vs_at"] = row["cost_vs_at"].replace(" (A100 time, paper)", "ᵖ")
    return row


def rich_group(group: Group) -> Table:
    """One group as a rich Table: paper rows dim italic, Pareto-optimal entries green."""
    shown = columns(group, _TERMINAL_COLUMNS)
    legend = ("AA = standard AutoAttack alone; score = clean + AA; x AT = pass-count ratio of a training step "
              "to AT; green = Pareto-optimal; n = seeds")
    legend += "; worst = correct under every attack" if any(k == "worst_case" for k, _ in shown) else ""
    legend += f"; {UNRANKED_MARK} = not ranked (no AutoAttack)" if any(e.unranked_reason for e in group.entries) else ""
    legend += "; ᵖ = the paper's A100 time ratio" if group.paper else ""
    legend += "."
    # Text, not markup: labels such as "arat [method.split_bn=False]" hold square brackets.
    table = Table(title=Text(group.title, style="bold"), caption=Text("\n".join([legend, *group.notes])),
                  caption_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    wrapping = {"label", "clean", "pgd20", "autoattack", "worst_case", "seconds_per_epoch"}
    for key, header in shown:
        table.add_column(header, justify="left" if key == "label" else "right",
                         style="bold cyan" if key == "label" else None, no_wrap=key not in wrapping)
    for entry in group.entries:
        row = _terminal_cells(entry)
        style = "dim italic" if entry.kind == "paper" else ("green" if entry.pareto else None)
        table.add_row(*(Text(row[k]) for k, _ in shown), style=style)
    return table


def rich_leaderboard(board: Leaderboard) -> RichGroup:
    """Every table, preceded by the separation note when there is more than one."""
    items: list[Any] = []
    if board.separation_note:
        items.append(Text(board.separation_note, style="yellow"))
    if board.machines_note:
        items.append(Text(board.machines_note, style="yellow"))
    items.extend(rich_group(g) for g in board.groups)
    return RichGroup(*items)
