"""Zoo cards: one Markdown file per method, machine-readable front matter plus teaching prose.

A card (``zoo_cards/<method>.md``) starts with YAML front matter between two ``---``
lines, in the spirit of RobustBench's model cards::

    ---
    name: trades                      # the registry name
    title: TRADES
    paper: "Theoretically Principled Trade-off between Robustness and Accuracy"
    authors: [...]
    venue: ICML
    year: 2019
    arxiv: "1901.08573"
    loss: "CE(f(x), y) + beta * KL(p(x) || p(x'))"
    defaults: {beta: 6.0}             # exactly the method's config dataclass defaults
    threat_model: {norm: linf, eps: 8/255}
    reported:                         # paper numbers per "<dataset>-<model>" setting (%)
      cifar10-resnet18: {clean: 81.25, autoattack: 48.54}
    reported_source: "..."
    reported_variants:                # optional: other paper rows, each with a condition
      "AR-AT+SWA":
        when: {averaging.swa: true}
        results: {cifar10-resnet18: {clean: 86.44, autoattack: 50.34}}
    ---
    # prose ...

The test suite checks every registered method has a card and that ``defaults`` equals
the config dataclass; ``atzoo compare --paper`` reads ``reported`` for reference rows
and ``atzoo docs METHOD`` renders the card.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atzoo.files.common import load_yaml
from atzoo.errors import AtzooError, brief
from atzoo.config.resources import resource_dir

#: Folder holding the cards: ``$ATZOO_CARDS``, else the checkout's ``zoo_cards/``, else the
#: copy inside the installed package (see :mod:`atzoo.config.resources`).
DEFAULT_CARDS_DIR = resource_dir("zoo_cards")

#: Front-matter keys every card must have.
REQUIRED_KEYS: tuple[str, ...] = ("name", "title", "paper", "venue", "year", "arxiv", "loss", "defaults")

#: Metric names allowed in a reported result.
METRICS: tuple[str, ...] = ("clean", "pgd20", "autoattack")


@dataclass(frozen=True)
class PaperResult:
    """One reported number set: a method (or variant) in one dataset-model setting.

    Attributes:
        label: what the row is called (``"AR-AT"``, ``"AR-AT+SWA"``).
        method: the registry name of the method.
        setting: ``"<dataset>-<model>"``, e.g. ``"cifar10-resnet18"``.
        clean, pgd20, autoattack: accuracies in percent (``None`` when not reported).
        source: where the number comes from.
        when: config conditions (flattened ``section.key`` -> value) a run must meet
            for this row to be its reference; empty for the main row.
        threat_model: ``(norm, eps)`` of the card's numbers, ``None`` when unstated.
        cost_vs_at: the paper's training time relative to AT (``reported_cost``), if given.
    """

    label: str
    method: str
    setting: str
    clean: float | None
    pgd20: float | None
    autoattack: float | None
    source: str
    when: dict[str, Any] = field(default_factory=dict)
    threat_model: tuple[str, float] | None = None
    cost_vs_at: float | None = None


@dataclass(frozen=True)
class Card:
    """A parsed zoo card: front matter (``meta``) and the Markdown ``body``."""

    name: str
    meta: dict[str, Any]
    body: str
    path: Path | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self.meta.get("defaults") or {})

    @property
    def title(self) -> str:
        return str(self.meta.get("title") or self.name)

    def threat_model(self, tm: Any = None) -> tuple[str, float] | None:
        """``(norm, eps)`` under which the reported numbers were measured, if stated
        (``tm``: a variant's own ``threat_model`` mapping instead of the card's)."""
        tm = tm or self.meta.get("threat_model")
        if not tm:
            return None
        return str(tm["norm"]), parse_eps(tm["eps"], f"{self.name} card threat_model.eps")

    def paper_results(self) -> list[PaperResult]:
        """Every reported result of the card, main rows first, then variants."""
        source = str(self.meta.get("reported_source") or self.meta.get("paper") or "")
        tm = self.threat_model()
        costs = self.meta.get("reported_cost") or {}
        rows = [
            dataclasses.replace(
                _paper_result(self.title, self.name, setting, values, source, {}, tm),
                cost_vs_at=_num((costs.get(setting) or {}).get("relative_to_at")),
            )
            for setting, values in (self.meta.get("reported") or {}).items()
        ]
        for label, variant in (self.meta.get("reported_variants") or {}).items():
            when = dict(variant.get("when") or {})
            # A variant may state its own threat model (e.g. the L2 table of a paper).
            own = self.threat_model(variant.get("threat_model")) if variant.get("threat_model") else tm
            for setting, values in (variant.get("results") or {}).items():
                rows.append(_paper_result(str(label), self.name, setting, values,
                                          str(variant.get("source") or source), when, own))
        return rows


def _paper_result(
    label: str, method: str, setting: str, values: dict[str, Any], source: str, when: dict[str, Any],
    threat_model: tuple[str, float] | None,
) -> PaperResult:
    return PaperResult(
        label=label, method=method, setting=setting, clean=_num(values.get("clean")),
        pgd20=_num(values.get("pgd20")), autoattack=_num(values.get("autoattack")),
        source=str(values.get("note") or source), when=when, threat_model=threat_model,
    )


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def parse_eps(value: Any, where: str) -> float:
    """A float eps from ``0.031``, ``8/255`` or ``"8/255"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and "/" in value:
        num, _, den = value.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            pass
    raise AtzooError(f"{where} must be a number or a fraction like 8/255, got {brief(value)}")


def setting_key(dataset: str, model: str) -> str:
    """The key cards use for a dataset-model setting, e.g. ``cifar10-resnet18``."""
    return f"{dataset}-{model}"


# --------------------------------------------------------------------------- loading


def cards_dir() -> Path:
    """Where the cards live (``$ATZOO_CARDS`` overrides the bundled ``zoo_cards/``)."""
    env = os.environ.get("ATZOO_CARDS")
    return Path(env) if env else DEFAULT_CARDS_DIR


def split_front_matter(text: str, source: str) -> tuple[dict[str, Any], str]:
    """Splits ``---``-delimited YAML front matter from the Markdown body.

    Raises:
        AtzooError: the front matter is missing, unterminated, not YAML, or not a mapping.
    """
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise AtzooError(f"card {source} must begin with a '---' line opening its YAML front matter")
    try:
        end = next(i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---")
    except StopIteration:
        raise AtzooError(f"card {source} has no closing '---' line after its front matter") from None
    meta = load_yaml("".join(lines[1:end]), f"card {source} front matter")
    if not isinstance(meta, dict):
        raise AtzooError(f"card {source} front matter must be a mapping of keys")
    return meta, "".join(lines[end + 1 :]).lstrip("\n")


def parse_card(text: str, source: str = "<card>") -> Card:
    """Parses and checks one card's text.

    Raises:
        AtzooError: a required key is missing or a reported result is malformed.
    """
    meta, body = split_front_matter(text, source)
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise AtzooError(f"card {source} lacks front-matter key(s) {', '.join(missing)}; "
                         f"required: {', '.join(REQUIRED_KEYS)}")
    if not isinstance(meta["defaults"], dict):
        raise AtzooError(f"card {source}: 'defaults' must be a mapping of hyper-parameters")
    card = Card(name=str(meta["name"]), meta=meta, body=body, path=None)
    _check_results(card, source)
    return card


def _check_results(card: Card, source: str) -> None:
    groups = [card.meta.get("reported") or {}]
    groups += [(v or {}).get("results") or {} for v in (card.meta.get("reported_variants") or {}).values()]
    for group in groups:
        if not isinstance(group, dict):
            raise AtzooError(f"card {source}: reported results must map '<dataset>-<model>' to metrics")
        for setting, values in group.items():
            if not isinstance(values, dict):
                raise AtzooError(f"card {source}: reported.{setting} must be a mapping like {{clean: .., autoattack: ..}}")
            for metric in set(values) - {"note"}:
                value = values[metric]
                ok = metric in METRICS and isinstance(value, (int, float)) and math.isfinite(value)
                if not ok:
                    raise AtzooError(f"card {source}: reported.{setting}.{metric}={brief(value)} is not valid; "
                                     f"metrics: {', '.join(METRICS)} (percentages)")
    card.threat_model()


def load_card_file(path: str | Path) -> Card:
    """Reads and parses one card file."""
    path = Path(path)
    card = parse_card(path.read_text(encoding="utf-8"), str(path))
    if card.name != path.stem:
        raise AtzooError(f"card {path} declares name '{card.name}', which must equal its file name '{path.stem}'")
    return dataclasses.replace(card, path=path)


def card_names(directory: str | Path | None = None) -> list[str]:
    """Names of the cards present (file stems), sorted."""
    folder = Path(directory) if directory else cards_dir()
    return sorted(p.stem for p in folder.glob("*.md")) if folder.is_dir() else []


def load_card(name: str, directory: str | Path | None = None) -> Card:
    """The card of method ``name``.

    Raises:
        AtzooError: no such card; the message names the closest card and lists them all.
    """
    folder = Path(directory) if directory else cards_dir()
    path = folder / f"{name}.md"
    if not path.is_file():
        names = card_names(folder)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise AtzooError(f"no zoo card for method '{name}'.{hint} Cards: {', '.join(names) or 'none'} (in {folder})")
    return load_card_file(path)


def load_cards(directory: str | Path | None = None) -> dict[str, Card]:
    """Every card in the folder, by name."""
    return {name: load_card(name, directory) for name in card_names(directory)}


def paper_results(setting: str, directory: str | Path | None = None) -> list[PaperResult]:
    """Every card's reported results for one ``<dataset>-<model>`` setting."""
    rows: list[PaperResult] = []
    for card in load_cards(directory).values():
        rows.extend(r for r in card.paper_results() if r.setting == setting)
    return rows
