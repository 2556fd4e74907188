"""Leaderboards: runs grouped by setting and threat model, seeds aggregated, ranked.

Rules (documented for users in ``docs/cli.md``):

* **Grouping.** Runs are grouped by ``(dataset, model, norm, eps)`` as evaluated. Robust
  accuracy under one threat model says nothing about another, so runs evaluated under
  different norms or radii never share a table; nor do different datasets or models.
  A dataset is identified by its content fingerprint (``eval.json``'s
  ``dataset_identity``, :mod:`atzoo.data.fingerprint`), so the same ``.npz`` reached by
  two paths, or mounted elsewhere on another machine, is one dataset; the table shows
  its readable name and a note lists the paths seen. Runs evaluated before atzoo
  recorded fingerprints are grouped by the dataset name as before.
* **Seeds.** Within a group, runs of the same method with the same configuration
  (everything but the seed and bookkeeping keys) are seeds of one *entry*: each metric
  is reported as mean ± sample standard deviation (ddof 1) over the seeds that have it.
  Runs of one method with different configurations are separate entries, labelled by
  the keys that differ (``arat [method.stop_grad=False]``).
* **Ranking.** Entries are ranked by ``clean + robust``, where robust is the AutoAttack
  accuracy when every seed of the entry was evaluated with AutoAttack, and the PGD-20
  accuracy otherwise (marked, because PGD overestimates robustness).
* **Cost.** Seconds per training epoch from ``metrics.jsonl``, and the ratio to the
  ``at`` entry of the same group, only where it means what it says
  (:mod:`atzoo.report.cost`: same hardware and settings, CPU time on the CPU, wall time
  on GPUs; else the recorded ``bench step-cost`` ratio, marked; else none, with why).
* **Provenance.** Every row lists the atzoo version, git commit, seeds, config hash and
  host of its runs; a table assembled from several machines says so.
* **Paper rows** (``--paper``) come from the zoo cards, only for the card's
  ``<dataset>-<model>`` setting and threat model; they are marked and never ranked.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atzoo.config.threat import EPS_TOLERANCE as THREAT_EPS_TOLERANCE, ThreatModel
from atzoo.report.cards import Card, PaperResult, load_cards, setting_key
from atzoo.report import cost as cost_rules
from atzoo.report.runs import PROVENANCE_KEYS, RunRecord
from atzoo.config.threat import format_eps  # noqa: F401  (re-exported: report.format_eps)

#: Two eps values closer than this are the same threat model (floats from YAML/JSON).
EPS_TOLERANCE = THREAT_EPS_TOLERANCE


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (``None`` for one value) and count of a metric."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> "Stat | None":
        """Aggregates the non-missing values; ``None`` when there are none."""
        present = [float(v) for v in values if v is not None]
        if not present:
            return None
        std = statistics.stdev(present) if len(present) > 1 else None
        return cls(mean=statistics.fmean(present), std=std, n=len(present))

    def text(self, digits: int = 2) -> str:
        """``83.77 ± 0.12`` (or ``83.77`` for a single value)."""
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


@dataclass
class Entry:
    """One leaderboard row: the seeds of one configuration, or a paper reference."""

    label: str
    method: str
    kind: str  # "measured" | "paper"
    runs: list[RunRecord] = field(default_factory=list)
    clean: Stat | None = None
    pgd20: Stat | None = None
    autoattack: Stat | None = None
    seconds_per_epoch: Stat | None = None
    step_seconds: Stat | None = None  # training-step seconds per epoch on the cost basis
    step_basis: str | None = None  # "process CPU time" (CPU) | "wall time" (GPU)
    cost_vs_at: float | None = None
    cost_source: str | None = None  # where cost_vs_at comes from (atzoo.report.cost)
    cost_note: str | None = None  # why there is no measured ratio
    cost_kind: str | None = None  # "measured" | "bench" | "wall-clock" (older runs) | None
    source: str = ""
    rank: int | None = None
    pareto: bool = False

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def robust_metric(self) -> str | None:
        """``"autoattack"`` when every seed has it, else ``"pgd20"``, else ``None``."""
        n_expected = max(self.seeds, 1)
        for name in ("autoattack", "pgd20"):
            stat = getattr(self, name)
            if stat is not None and (self.kind == "paper" or stat.n == n_expected):
                return name
        for name in ("autoattack", "pgd20"):
            if getattr(self, name) is not None:
                return name
        return None

    @property
    def robust(self) -> Stat | None:
        metric = self.robust_metric
        return getattr(self, metric) if metric else None

    @property
    def score(self) -> float | None:
        """``clean + robust`` (means), the ranking key."""
        if self.clean is None or self.robust is None:
            return None
        return self.clean.mean + self.robust.mean

    def to_dict(self) -> dict[str, Any]:
        stat = lambda s: s.to_dict() if s is not None else None  # noqa: E731
        return {
            "rank": self.rank, "label": self.label, "method": self.method, "kind": self.kind,
            "seeds": self.seeds, "seed_values": [r.seed for r in self.runs],
            "clean": stat(self.clean), "pgd20": stat(self.pgd20), "autoattack": stat(self.autoattack),
            "robust_metric": self.robust_metric, "score": self.score, "pareto": self.pareto,
            "seconds_per_epoch": stat(self.seconds_per_epoch), "step_seconds_per_epoch": stat(self.step_seconds),
            "step_seconds_basis": self.step_basis, "cost_vs_at": self.cost_vs_at,
            "cost_kind": self.cost_kind, "cost_source": self.cost_source, "cost_note": self.cost_note,
            "runs": [str(r.path) for r in self.runs], "source": self.source,
            "provenance": [{"run": str(r.path), **r.provenance} for r in self.runs],
        }

    def provenance_values(self, key: str) -> list[str]:
        """The distinct values of one provenance field over the entry's runs (unknown: ``?``)."""
        return list(dict.fromkeys("?" if r.provenance.get(key) is None else str(r.provenance[key])
                                  for r in self.runs))

    def provenance_text(self) -> str:
        """One line per field, for a hover text or a details row."""
        names = {"atzoo_version": "atzoo", "git_commit": "commit", "seed": "seeds", "config_hash": "config",
                 "host": "host", "machine": "machine"}
        return "; ".join(f"{names[k]} {', '.join(self.provenance_values(k))}" for k in PROVENANCE_KEYS)


@dataclass
class Group:
    """One table: every entry shares dataset, model and threat model."""

    dataset: str
    model: str
    norm: str
    eps: float
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dataset_key: str = ""  # content fingerprint ("sha:...") or, for older runs, "name:<dataset>"
    dataset_sources: list[str] = field(default_factory=list)  # eval.json dataset strings seen

    @property
    def dataset_fingerprint(self) -> str | None:
        return self.dataset_key[4:] if self.dataset_key.startswith("sha:") else None

    @property
    def hosts(self) -> list[str]:
        """Hosts the group's runs were made on (recorded ones only)."""
        return sorted({r.provenance["host"] for e in self.measured for r in e.runs if r.provenance.get("host")})

    @property
    def eps_label(self) -> str:
        return format_eps(self.eps)

    @property
    def title(self) -> str:
        norm = "L-inf" if self.norm == "linf" else "L2"
        return f"{self.dataset} · {self.model} · {norm} eps={self.eps_label}"

    @property
    def measured(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "measured"]

    @property
    def paper(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "paper"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title, "dataset": self.dataset, "model": self.model, "norm": self.norm,
            "eps": self.eps, "eps_label": self.eps_label, "notes": list(self.notes),
            "dataset_fingerprint": self.dataset_fingerprint, "dataset_sources": list(self.dataset_sources),
            "hosts": self.hosts, "rows": [e.to_dict() for e in self.entries],
        }


@dataclass
class Leaderboard:
    """Every group of a comparison plus the note that says why groups were separated."""

    groups: list[Group]
    separation_note: str | None = None
    skipped: list[Path] = field(default_factory=list)  # run directories without eval.json

    def to_dict(self) -> dict[str, Any]:
        from atzoo import __version__

        return {
            "atzoo_version": __version__, "n_runs": sum(len(e.runs) for g in self.groups for e in g.entries),
            "separation_note": self.separation_note, "hosts": self.hosts, "machines_note": self.machines_note,
            "groups": [g.to_dict() for g in self.groups],
        }

    @property
    def hosts(self) -> list[str]:
        return sorted({h for g in self.groups for h in g.hosts})

    @property
    def machines_note(self) -> str | None:
        """Says when the runs come from several machines (hover a row for which one)."""
        if len(self.hosts) < 2:
            return None
        return (f"Assembled from runs made on {len(self.hosts)} machines ({', '.join(self.hosts)}); "
                "each row's provenance names its host, atzoo version and commit.")


# --------------------------------------------------------------------------- grouping


def group_runs(runs: Sequence[RunRecord]) -> list[Group]:
    """Splits runs into groups of equal (dataset content, model, norm, eps), in first-seen order."""
    groups: list[Group] = []
    for run in runs:
        entry = Entry(label=run.label, method=run.method, kind="measured", runs=[run])
        for group in groups:
            if (group.dataset_key, group.model, group.norm) == (run.dataset_key, run.model, run.norm) and math.isclose(
                group.eps, run.eps, rel_tol=0.0, abs_tol=EPS_TOLERANCE
            ):
                group.entries.append(entry)
                if run.dataset not in group.dataset_sources:
                    group.dataset_sources.append(run.dataset)
                break
        else:
            groups.append(Group(run.dataset_name, run.model, run.norm, run.eps, entries=[entry],
                                dataset_key=run.dataset_key, dataset_sources=[run.dataset]))
    return groups


def separation_note(groups: Sequence[Group]) -> str | None:
    """Why the runs form more than one table (``None`` for a single table)."""
    if len(groups) < 2:
        return None
    differing = []
    for name, values in (
        ("dataset", {_dataset_label(g, groups) for g in groups}), ("model", {g.model for g in groups}),
        ("norm", {g.norm for g in groups}), ("eps", {g.eps_label for g in groups}),
    ):
        if len(values) > 1:
            differing.append(f"{name} ({', '.join(sorted(values))})")
    return (
        f"The runs form {len(groups)} separate tables because they differ in {'; '.join(differing)}. "
        "Accuracies measured on different data, models or threat models (norm, eps) are not "
        "comparable, so they are never ranked together."
    )


def _dataset_label(group: Group, groups: Sequence[Group]) -> str:
    """The readable name, plus the content fingerprint where two different datasets share it."""
    clash = any(g.dataset == group.dataset and g.dataset_key != group.dataset_key for g in groups)
    return f"{group.dataset} [data {group.dataset_fingerprint or 'unrecorded'}]" if clash else group.dataset


def split_configurations(runs: Sequence[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """Seeds of one configuration together; labels say how configurations differ.

    Runs with the same label (method and averaging) but different configurations get
    the differing keys appended, e.g. ``arat [method.gamma=10.0]``.
    """
    by_label: dict[str, dict[tuple[tuple[str, str], ...], list[RunRecord]]] = {}
    for run in runs:
        by_label.setdefault(run.label, {}).setdefault(run.fingerprint(), []).append(run)
    result: list[tuple[str, list[RunRecord]]] = []
    for label, configs in by_label.items():
        if len(configs) == 1:
            result.append((label, next(iter(configs.values()))))
            continue
        differing = _differing_keys([dict(fp) for fp in configs if fp])
        result += [(_config_label(label, fp, differing), members) for fp, members in configs.items()]
    return result


def _config_label(label: str, fingerprint: tuple[tuple[str, str], ...], differing: list[str]) -> str:
    """``label`` plus up to three of the keys that tell this configuration apart."""
    if not fingerprint:  # no config.yaml: the configuration is unknown
        return f"{label} [no config.yaml]"
    if not differing:  # the only known configuration of this label
        return label
    values = dict(fingerprint)
    shown = [f"{k}={values.get(k, 'unset')}" for k in differing[:3]]
    more = f", +{len(differing) - 3} more" if len(differing) > 3 else ""
    return f"{label} [{', '.join(shown)}{more}]"


def _differing_keys(configs: Sequence[dict[str, str]]) -> list[str]:
    keys = sorted(set().union(*configs))
    return [k for k in keys if len({c.get(k) for c in configs}) > 1]


# --------------------------------------------------------------------------- entries


def aggregate(label: str, runs: Sequence[RunRecord]) -> Entry:
    """One measured entry from the seeds of one configuration."""
    steps, step_basis = cost_rules.step_seconds(runs)
    return Entry(
        label=label, method=runs[0].method, kind="measured", runs=list(runs),
        clean=Stat.of([r.clean for r in runs]), pgd20=Stat.of([r.pgd20 for r in runs]),
        autoattack=Stat.of([r.autoattack for r in runs]),
        seconds_per_epoch=Stat.of([r.seconds_per_epoch for r in runs]),
        step_seconds=Stat.of(steps), step_basis=step_basis,
    )


def attach_cost_ratio(entries: Sequence[Entry], *, records: Path | None = None) -> None:
    """Sets ``cost_vs_at``, ``cost_source`` and ``cost_note`` of every measured entry.

    Against the group's plain ``at`` entry, by the rules of :mod:`atzoo.report.cost`;
    ``records`` is the folder of ``bench step-cost`` records (default: this machine's).
    """
    reference = next((e for e in entries if e.kind == "measured" and e.label == "at"), None)
    reference = reference or next((e for e in entries if e.kind == "measured" and e.method == "at"), None)
    if reference is None:
        return
    for entry in entries:
        if entry.kind != "measured":
            continue
        ratio, source, reason = cost_rules.measured_ratio(entry.runs, reference.runs)
        if ratio is None and reason is not None and entry is not reference:
            entry.cost_note = f"No measured cost ratio for {entry.label}: {reason}."
            bench = cost_rules.bench_ratio(entry.method, entry.runs, records)
            if bench is not None:
                (ratio, source), entry.cost_kind = bench, "bench"
        elif ratio is not None:
            entry.cost_kind = "wall-clock" if source == cost_rules.LEGACY_SOURCE else "measured"
        entry.cost_vs_at, entry.cost_source = ratio, source


def mark_pareto(entries: Sequence[Entry]) -> None:
    """Marks the entries no other entry beats in both clean and robust accuracy."""
    scored = [e for e in entries if e.clean is not None and e.robust is not None]
    for entry in scored:
        entry.pareto = not any(_dominates(other, entry) for other in scored if other is not entry)


def _dominates(a: Entry, b: Entry) -> bool:
    ac, ar, bc, br = a.clean.mean, a.robust.mean, b.clean.mean, b.robust.mean  # type: ignore[union-attr]
    return ac >= bc and ar >= br and (ac > bc or ar > br)


def rank(entries: Sequence[Entry]) -> list[Entry]:
    """Measured entries by descending score (unscored last), then paper rows."""
    measured = sorted(
        (e for e in entries if e.kind == "measured"),
        key=lambda e: (e.score is None, -(e.score or 0.0), e.label),
    )
    for position, entry in enumerate(measured, start=1):
        entry.rank = position if entry.score is not None else None
    paper = [e for e in entries if e.kind == "paper"]
    return measured + paper


# --------------------------------------------------------------------------- paper rows


def paper_entries(group: Group, cards: dict[str, Card]) -> list[Entry]:
    """Reference rows from the cards of the methods present in ``group``.

    A card's row appears only when its setting is the group's ``<dataset>-<model>`` and
    its threat model matches the group's; a variant row (e.g. AR-AT+SWA) only when a run
    of that method meets the variant's ``when`` conditions.
    """
    setting = setting_key(group.dataset, group.model)
    methods = {e.method: e for e in group.measured}
    rows: list[Entry] = []
    for method, card in cards.items():
        if method not in methods:
            continue
        for result in card.paper_results():
            if result.setting != setting or not _threat_matches(result, group):
                continue
            if result.when and not any(_meets(run.config, result.when) for e in group.measured
                                       if e.method == method for run in e.runs):
                continue
            rows.append(_paper_entry(result))
    return rows


def _threat_matches(result: PaperResult, group: Group) -> bool:
    if result.threat_model is None:
        return False
    return result.threat_model.matches(ThreatModel(group.norm, group.eps))


def _meets(config: dict[str, Any], when: dict[str, Any]) -> bool:
    return all(config.get(key) == value for key, value in when.items())


def _paper_entry(result: PaperResult) -> Entry:
    as_stat = lambda v: Stat(mean=v, std=None, n=1) if v is not None else None  # noqa: E731
    return Entry(
        label=f"{result.label} (paper)", method=result.method, kind="paper",
        clean=as_stat(result.clean), pgd20=as_stat(result.pgd20), autoattack=as_stat(result.autoattack),
        source=result.source, cost_vs_at=result.cost_vs_at,
    )


# --------------------------------------------------------------------------- top level


def build_leaderboard(
    runs: Sequence[RunRecord], *, paper: bool = False, cards_dir: str | Path | None = None
) -> Leaderboard:
    """Groups, aggregates, ranks and (optionally) adds paper reference rows."""
    cards = load_cards(cards_dir) if paper else {}
    groups = group_runs(runs)
    for group in groups:
        group_runs_ = [r for e in group.entries for r in e.runs]
        entries = [aggregate(label, members) for label, members in split_configurations(group_runs_)]
        group.entries = entries
        attach_cost_ratio(entries)
        mark_pareto(entries)
        if paper:
            entries = entries + paper_entries(group, cards)
        group.entries = rank(entries)
        group.notes = group_notes(group)
    return Leaderboard(groups=groups, separation_note=separation_note(groups))


def group_notes(group: Group) -> list[str]:
    """Footnotes: PGD fallback, uneven evaluation sizes, missing cost."""
    notes = []
    fallback = [e.label for e in group.measured if e.robust_metric == "pgd20"]
    if fallback:
        notes.append(
            f"Ranked on PGD-20 (marked *) because AutoAttack was not run for every seed of: {', '.join(fallback)}. "
            "PGD-20 overestimates robustness; run 'atzoo eval RUN --attacks aa' for comparable numbers."
        )
    sizes = {r.n_examples for e in group.measured for r in e.runs if r.n_examples is not None}
    if len(sizes) > 1:
        notes.append(f"Runs were evaluated on different numbers of test examples ({', '.join(map(str, sorted(sizes)))}).")
    aa_sizes = {r.aa_n_examples for e in group.measured for r in e.runs
                if r.autoattack is not None and r.aa_n_examples is not None}
    if aa_sizes and (len(aa_sizes) > 1 or max(aa_sizes) < max(sizes, default=0)):
        notes.append(f"AutoAttack ran on the first {' / '.join(map(str, sorted(aa_sizes)))} test examples "
                     f"(clean and PGD-20 on {' / '.join(map(str, sorted(sizes)))}).")
    if any(e.seconds_per_epoch is None for e in group.measured):
        notes.append("Cost is missing where a run's metrics.jsonl has no timing row of a complete epoch.")
    notes += cost_notes(group)
    if len(group.dataset_sources) > 1:
        notes.append(f"One dataset (content fingerprint {group.dataset_fingerprint}) reached by different paths: "
                     f"{', '.join(group.dataset_sources)}.")
    if len(group.hosts) > 1:
        notes.append(f"Runs made on {len(group.hosts)} machines: {', '.join(group.hosts)}.")
    if group.paper:
        notes.append("Rows marked (paper) are the numbers reported in the papers (see zoo_cards/), not measured here.")
    return notes


def cost_notes(group: Group) -> list[str]:
    """Where the cost ratios come from, and why an entry has no measured one."""
    notes = []
    sources: dict[str, list[str]] = {}
    for entry in group.measured:
        if entry.cost_source and entry.cost_vs_at is not None:
            sources.setdefault(entry.cost_source, []).append(entry.label)
    for source, labels in sources.items():
        notes.append(f"Cost vs AT of {', '.join(labels)}: {source}.")
    for entry in group.measured:
        if entry.cost_note:
            fallback = "the recorded benchmark ratio is shown instead" if entry.cost_vs_at is not None else \
                "no ratio is shown (no 'atzoo bench step-cost' record for its hardware)"
            notes.append(f"{entry.cost_note[:-1]}; step times from different hardware or settings are not "
                         f"comparable, so {fallback}.")
    return notes
