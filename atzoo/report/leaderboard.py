"""Leaderboards: runs grouped by what was measured, seeds counted by run identity, ranked on AutoAttack.

Rules (documented for users in ``docs/cli.md``):

* **Grouping.** Runs are grouped by the *test set* they were evaluated on (its content
  digest, ``eval.json``'s ``dataset_identity.test``) and the threat model (norm, eps).
  Robust accuracy under one threat model says nothing about another, so those never
  share a table. The training data (with any validation split carved out of it), the
  model and the training eps are properties of a run, not of the measurement: they show
  in the row (label, hover, JSON ``provenance``), not as a reason to split. By default
  every run is evaluated at its dataset's benchmark threat model, so AT and TRADES trained
  at different radii meet in one table. Runs evaluated before atzoo recorded the test
  digest are grouped by the dataset fingerprint or name. When tables must split, each
  heading names what differs, and no two tables share a heading.
* **Seeds.** Within a group, runs of the same method and configuration (everything but
  the seed and bookkeeping keys) are seeds of one *entry*, each metric reported as
  mean ± sample std (ddof 1). A run's identity is its configuration, seed and weights
  (``eval.json``'s ``weights_fingerprint``): two folders holding the same weights count
  once; two different weights with one configuration and seed are never averaged as
  seeds; a run without ``config.yaml`` cannot be placed and is listed alone. The notes
  name every such run.
* **Columns.** ``AA`` is standard AutoAttack alone, ``PGD-20`` PGD-20 alone, both on the
  same images; ``worst case`` (correct under every attack run) only when it differs from
  AA somewhere in the table.
* **Ranking.** Entries whose every seed has AutoAttack are ranked by ``clean + AA``.
  Entries without AutoAttack are listed after them, marked, and never ranked among them.
* **Cost.** ``x AT`` is the deterministic pass-count ratio to the group's ``at`` entry
  (forward and backward passes of one training step weighted by their FLOPs, the bound
  ``atzoo bench step-cost`` computes; :mod:`atzoo.bench.run_passes`). A *measured* ratio is
  added only where both sides were timed on the same device kind with a load-robust
  measure (:mod:`atzoo.report.cost`), labelled with the machine.
* **Provenance.** Every row lists the atzoo version, git commit, seeds, config hash,
  weights, training data and host of its runs; a table from several machines says so.
* **Paper rows** (``--paper``) come from the zoo cards, only for a model of the table and
  its threat model; they are marked and never ranked.
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
    worst_case: Stat | None = None
    seconds_per_epoch: Stat | None = None
    step_seconds: Stat | None = None  # training-step seconds per epoch on the cost basis
    step_basis: str | None = None  # "process CPU time" (CPU) | "wall time" (GPU)
    cost_vs_at: float | None = None  # the pass-count ratio to AT (paper rows: the paper's time ratio)
    cost_source: str | None = None  # how cost_vs_at was obtained
    cost_note: str | None = None  # why there is no pass-count or measured ratio
    cost_kind: str | None = None  # "passes" | "paper" | None
    measured_vs_at: float | None = None  # a load-robust measured time ratio, same device kind
    measured_source: str | None = None  # what was timed, on which machine
    measured_note: str | None = None  # why there is no measured ratio
    source: str = ""
    rank: int | None = None
    pareto: bool = False

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def robust_metric(self) -> str | None:
        """``"autoattack"`` when every seed has AutoAttack (paper rows: when reported), else ``None``."""
        if self.autoattack is not None and (self.kind == "paper" or self.autoattack.n == max(self.seeds, 1)):
            return "autoattack"
        return None

    @property
    def robust(self) -> Stat | None:
        return self.autoattack if self.robust_metric else None

    @property
    def ranked(self) -> bool:
        """Whether the entry takes part in the ranking (measured, AutoAttack for every seed)."""
        return self.kind == "measured" and self.score is not None

    @property
    def unranked_reason(self) -> str | None:
        """Why a measured entry is listed after the ranked ones (``None`` when ranked)."""
        if self.kind != "measured" or self.ranked:
            return None
        if self.autoattack is None:
            return "no AutoAttack"
        if self.clean is None:
            return "no clean accuracy"
        return f"AutoAttack for {self.autoattack.n} of {self.seeds} seeds"

    @property
    def score(self) -> float | None:
        """``clean + AA`` (means), the ranking key."""
        if self.clean is None or self.robust is None:
            return None
        return self.clean.mean + self.robust.mean

    def to_dict(self) -> dict[str, Any]:
        stat = lambda s: s.to_dict() if s is not None else None  # noqa: E731
        return {
            "rank": self.rank, "label": self.label, "method": self.method, "kind": self.kind,
            "seeds": self.seeds, "seed_values": [r.seed for r in self.runs],
            "clean": stat(self.clean), "pgd20": stat(self.pgd20), "autoattack": stat(self.autoattack),
            "worst_case": stat(self.worst_case),
            "robust_metric": self.robust_metric, "score": self.score, "ranked": self.ranked,
            "unranked_reason": self.unranked_reason, "pareto": self.pareto,
            "seconds_per_epoch": stat(self.seconds_per_epoch), "step_seconds_per_epoch": stat(self.step_seconds),
            "step_seconds_basis": self.step_basis, "cost_vs_at": self.cost_vs_at,
            "cost_kind": self.cost_kind, "cost_source": self.cost_source, "cost_note": self.cost_note,
            "measured_vs_at": self.measured_vs_at, "measured_source": self.measured_source,
            "measured_note": self.measured_note,
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
                 "weights": "weights", "train_data": "training data", "host": "host", "machine": "machine"}
        return "; ".join(f"{names[k]} {', '.join(self.provenance_values(k))}" for k in PROVENANCE_KEYS)


@dataclass
class Group:
    """One table: every entry was measured on one test set under one threat model."""

    dataset: str
    model: str  # the one model of the table, or "" when it holds several
    norm: str
    eps: float
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dataset_key: str = ""  # the test set's content digest ("test:..."), else "sha:..."/"name:..." (older runs)
    dataset_sources: list[str] = field(default_factory=list)  # eval.json dataset strings seen
    models: list[str] = field(default_factory=list)
    distinguish: str = ""  # what tells this table's heading apart from another's with the same text

    @property
    def dataset_fingerprint(self) -> str | None:
        """The test set's digest (older runs: the dataset's fingerprint)."""
        return self.dataset_key.split(":", 1)[1] if self.dataset_key.startswith(("test:", "sha:")) else None

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
        parts = [self.dataset] + ([self.model] if self.model else []) + [f"{norm} eps={self.eps_label}"]
        return " · ".join(parts) + (f" [{self.distinguish}]" if self.distinguish else "")

    @property
    def measured(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "measured"]

    @property
    def paper(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "paper"]

    @property
    def show_worst_case(self) -> bool:
        """The worst-case column is shown only where it differs from AutoAttack alone."""
        return any(e.worst_case is not None and (e.autoattack is None or abs(e.worst_case.mean - e.autoattack.mean)
                                                 > 0.005) for e in self.measured)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title, "dataset": self.dataset, "model": self.model or None, "models": list(self.models),
            "norm": self.norm, "eps": self.eps, "eps_label": self.eps_label, "notes": list(self.notes),
            "test_set_fingerprint": self.dataset_fingerprint, "dataset_fingerprint": self.dataset_fingerprint,
            "dataset_sources": list(self.dataset_sources), "hosts": self.hosts,
            "rows": [e.to_dict() for e in self.entries],
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
    """Splits runs into groups of equal (test set, norm, eps), in first-seen order."""
    groups: list[Group] = []
    for run in runs:
        entry = Entry(label=run.label, method=run.method, kind="measured", runs=[run])
        for group in groups:
            if (group.dataset_key, group.norm) == (run.test_key, run.norm) and math.isclose(
                group.eps, run.eps, rel_tol=0.0, abs_tol=EPS_TOLERANCE
            ):
                group.entries.append(entry)
                if run.dataset not in group.dataset_sources:
                    group.dataset_sources.append(run.dataset)
                if run.model not in group.models:
                    group.models.append(run.model)
                break
        else:
            groups.append(Group(run.dataset_name, run.model, run.norm, run.eps, entries=[entry],
                                dataset_key=run.test_key, dataset_sources=[run.dataset], models=[run.model]))
    for group in groups:
        group.model = group.models[0] if len(group.models) == 1 else ""
    distinguish_headings(groups)
    return groups


def distinguish_headings(groups: Sequence[Group]) -> None:
    """Adds what differs to headings that would otherwise read alike (never two the same)."""
    by_title: dict[str, list[Group]] = {}
    for group in groups:
        by_title.setdefault(group.title, []).append(group)
    for same in by_title.values():
        if len(same) < 2:
            continue
        for index, group in enumerate(same, start=1):
            digest = group.dataset_fingerprint
            group.distinguish = (f"test set {digest}" if digest and group.dataset_key.startswith("test:")
                                 else f"data {digest}" if digest else f"data unrecorded #{index}")
        if len({g.title for g in same}) < len(same):  # e.g. one fingerprinted, one older run: number them
            for index, group in enumerate(same, start=1):
                group.distinguish += f" #{index}"


def separation_note(groups: Sequence[Group]) -> str | None:
    """Why the runs form more than one table (``None`` for a single table)."""
    if len(groups) < 2:
        return None
    differing = []
    for name, values in (
        ("test set", {_dataset_label(g, groups) for g in groups}),
        ("norm", {g.norm for g in groups}), ("eps", {g.eps_label for g in groups}),
    ):
        if len(values) > 1:
            differing.append(f"{name} ({', '.join(sorted(values))})")
    return (
        f"The runs form {len(groups)} separate tables because they differ in {'; '.join(differing)}. "
        "Accuracies measured on different test images or threat models (norm, eps) are not "
        "comparable, so they are never ranked together."
    )


def _dataset_label(group: Group, groups: Sequence[Group]) -> str:
    """The readable name, plus the test set's fingerprint where two different sets share it."""
    clash = any(g.dataset == group.dataset and g.dataset_key != group.dataset_key for g in groups)
    return f"{group.dataset} [{group.distinguish or group.dataset_fingerprint or 'unrecorded'}]" if clash \
        else group.dataset


def split_configurations(runs: Sequence[RunRecord], notes: list[str] | None = None
                         ) -> list[tuple[str, list[RunRecord]]]:
    """Seeds of one configuration together, by run identity; labels say how configurations differ.

    Runs with the same label (method, averaging, and the model where a table holds several)
    but different configurations get the differing keys appended, e.g.
    ``arat [method.gamma=10.0]``. Within a configuration, runs holding the same weights
    count once; if one seed holds two different weights, or a run has no config.yaml,
    its runs are listed one per row, labelled by their weights. ``notes`` receives one line
    per run that could not be placed as a seed.
    """
    notes = notes if notes is not None else []
    models = {r.model for r in runs}
    label_of = (lambda r: f"{r.label} ({r.model})") if len(models) > 1 else (lambda r: r.label)  # noqa: E731
    by_label: dict[str, dict[tuple[tuple[str, str], ...], list[RunRecord]]] = {}
    for run in runs:
        by_label.setdefault(label_of(run), {}).setdefault(run.fingerprint(), []).append(run)
    result: list[tuple[str, list[RunRecord]]] = []
    for label, configs in by_label.items():
        differing = _differing_keys([dict(fp) for fp in configs if fp])
        for fp, members in configs.items():
            name = label if len(configs) == 1 or not fp else _config_label(label, fp, differing)
            result += _seed_entries(name, members, known_config=bool(fp), notes=notes)
    return result


def _seed_entries(label: str, runs: Sequence[RunRecord], *, known_config: bool, notes: list[str]
                  ) -> list[tuple[str, list[RunRecord]]]:
    """The runs of one configuration as one entry of seeds, or one row per run when the
    runs' identities (configuration + seed + weights) do not make them seeds."""
    unique: list[RunRecord] = []
    for run in runs:
        twin = next((u for u in unique if run.weights is not None and u.weights == run.weights), None)
        if twin is not None:
            notes.append(f"{run.path} holds the same weights ({run.weights}) as {twin.path}: counted once.")
        else:
            unique.append(run)
    if not known_config:
        notes.append(f"Could not place {', '.join(str(r.path) for r in unique)} as seeds of a configuration "
                     "(no config.yaml): each is listed alone, labelled by its weights.")
        return [(f"{label} [weights {r.weights or 'unrecorded'}]", [r]) for r in unique]
    seeds: dict[Any, list[RunRecord]] = {}
    for run in unique:
        seeds.setdefault(run.seed, []).append(run)
    clashes = [group for group in seeds.values() if len(group) > 1]
    if not clashes:
        return [(label, unique)]
    for group in clashes:
        notes.append(f"{', '.join(str(r.path) for r in group)} share configuration and seed {group[0].seed} but hold "
                     "different weights: not seeds of one entry; each is listed alone.")
    return [(f"{label} [seed {r.seed}, weights {r.weights or 'unrecorded'}]", [r]) for r in unique]


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
        autoattack=Stat.of([r.autoattack for r in runs]), worst_case=Stat.of([r.worst_case for r in runs]),
        seconds_per_epoch=Stat.of([r.seconds_per_epoch for r in runs]),
        step_seconds=Stat.of(steps), step_basis=step_basis,
    )


def attach_cost_ratio(entries: Sequence[Entry], *, records: Path | None = None) -> None:
    """Sets the cost columns of every measured entry against the group's plain ``at`` entry
    (one of the same model where the table holds several).

    ``cost_vs_at``: the pass-count ratio (:mod:`atzoo.bench.run_passes`), deterministic;
    ``measured_vs_at``: a time ratio only where :func:`atzoo.report.cost.measured_ratio`
    finds a load-robust measure on the same device kind. ``records`` is unused (kept for
    callers of the recorded-benchmark lookup).
    """
    from atzoo.bench import run_passes as passes

    measured = [e for e in entries if e.kind == "measured"]
    for entry in measured:
        model = entry.runs[0].model
        ats = [e for e in measured if e.method == "at" and e.runs[0].model == model]
        reference = next((e for e in ats if e.label.split(" ")[0] == "at"), ats[0] if ats else None)
        if reference is None:
            entry.cost_note = f"No cost ratio for {entry.label}: no plain AT run of {model} in this table"
            continue
        ratio, source = passes.pass_ratio(entry.runs, reference.runs)
        if ratio is not None:
            entry.cost_vs_at, entry.cost_kind, entry.cost_source = ratio, "passes", source
        elif entry is not reference:
            entry.cost_note = f"No pass-count ratio for {entry.label}: {source}"
        timed, timed_source, reason = cost_rules.measured_ratio(entry.runs, reference.runs)
        if timed is not None:
            entry.measured_vs_at, entry.measured_source = timed, timed_source
        elif reason:
            entry.measured_note = f"No measured cost ratio for {entry.label}: {reason}"


def mark_pareto(entries: Sequence[Entry]) -> None:
    """Marks the ranked entries no other ranked entry beats in both clean and AutoAttack accuracy."""
    scored = [e for e in entries if e.ranked]
    for entry in scored:
        entry.pareto = not any(_dominates(other, entry) for other in scored if other is not entry)


def _dominates(a: Entry, b: Entry) -> bool:
    ac, ar, bc, br = a.clean.mean, a.robust.mean, b.clean.mean, b.robust.mean  # type: ignore[union-attr]
    return ac >= bc and ar >= br and (ac > bc or ar > br)


def rank(entries: Sequence[Entry]) -> list[Entry]:
    """Ranked entries by descending ``clean + AA``, then the unranked ones (no AutoAttack for
    every seed: listed after, marked, never ranked among them), then paper rows."""
    ranked = sorted((e for e in entries if e.ranked), key=lambda e: (-(e.score or 0.0), e.label))
    for position, entry in enumerate(ranked, start=1):
        entry.rank = position
    unranked = [e for e in entries if e.kind == "measured" and not e.ranked]
    for entry in unranked:
        entry.rank = None
    paper = [e for e in entries if e.kind == "paper"]
    return ranked + unranked + paper


# --------------------------------------------------------------------------- paper rows


def paper_entries(group: Group, cards: dict[str, Card]) -> list[Entry]:
    """Reference rows from the cards of the methods present in ``group``.

    A card's row appears only when its setting is the group's ``<dataset>-<model>`` and
    its threat model matches the group's; a variant row (e.g. AR-AT+SWA) only when a run
    of that method meets the variant's ``when`` conditions.
    """
    settings = {setting_key(group.dataset, model) for model in group.models or [group.model]}
    methods = {e.method: e for e in group.measured}
    rows: list[Entry] = []
    for method, card in cards.items():
        if method not in methods:
            continue
        for result in card.paper_results():
            if result.setting not in settings or not _threat_matches(result, group):
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
        source=result.source, cost_vs_at=result.cost_vs_at, cost_kind="paper" if result.cost_vs_at is not None else None,
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
        placement: list[str] = []
        entries = [aggregate(label, members) for label, members in split_configurations(group_runs_, placement)]
        group.entries = entries
        attach_cost_ratio(entries)
        mark_pareto(entries)
        if paper:
            entries = entries + paper_entries(group, cards)
        group.entries = rank(entries)
        group.notes = group_notes(group) + placement
    return Leaderboard(groups=groups, separation_note=separation_note(groups))


def group_notes(group: Group) -> list[str]:
    """Footnotes: unranked entries, threat model, uneven evaluation sizes, cost."""
    notes = []
    unranked = [f"{e.label} ({e.unranked_reason})" for e in group.measured if not e.ranked]
    if unranked:
        notes.append(
            f"Not ranked (listed after the ranked entries, marked †): {', '.join(unranked)}. Ranking uses AutoAttack; "
            "PGD-20 overestimates robustness, so an entry without AutoAttack is never ranked among those with it; "
            "run 'atzoo eval RUN --attacks aa'."
        )
    sources = sorted({r.threat_source for e in group.measured for r in e.runs if r.threat_source})
    if sources:
        notes.append(f"Every number in this table is at {'L-inf' if group.norm == 'linf' else 'L2'} "
                     f"eps={group.eps_label} ({'; '.join(sources)}), whatever eps each method trained with.")
    if group.show_worst_case:
        notes.append("worst case = correct under every attack run on the same images (AA and PGD-20 together); "
                     "shown because it differs from AA alone.")
    sizes = {r.n_examples for e in group.measured for r in e.runs if r.n_examples is not None}
    if len(sizes) > 1:
        notes.append(f"Runs were evaluated on different numbers of test examples ({', '.join(map(str, sorted(sizes)))}).")
    aa_sizes = {r.aa_n_examples for e in group.measured for r in e.runs
                if r.autoattack is not None and r.aa_n_examples is not None}
    if aa_sizes and (len(aa_sizes) > 1 or max(aa_sizes) < max(sizes, default=0)):
        notes.append(f"AutoAttack ran on the first {' / '.join(map(str, sorted(aa_sizes)))} test examples "
                     f"(clean and PGD-20 on {' / '.join(map(str, sorted(sizes)))}).")
    if len(group.models) > 1:
        notes.append(f"Models {', '.join(group.models)} share this table: same test images, same threat model.")
    notes += cost_notes(group)
    if len(group.dataset_sources) > 1:
        notes.append(f"One test set (content fingerprint {group.dataset_fingerprint}) reached by different paths: "
                     f"{', '.join(group.dataset_sources)}.")
    train_data = {r.provenance.get("train_data") for e in group.measured for r in e.runs} - {None}
    if len(train_data) > 1:
        notes.append(f"The runs trained on {len(train_data)} different training sets (a validation split or a subset "
                     "changes it; hover a row, or see 'provenance' in the JSON); all were tested on the same images.")
    if len(group.hosts) > 1:
        notes.append(f"Runs made on {len(group.hosts)} machines: {', '.join(group.hosts)}.")
    if group.paper:
        notes.append("Rows marked (paper) are the numbers reported in the papers (see zoo_cards/), not measured here.")
    return notes


def cost_notes(group: Group) -> list[str]:
    """What the cost ratios are, and why an entry has none."""
    notes = []
    if any(e.cost_kind == "passes" for e in group.measured):
        notes.append("x AT = pass-count ratio to AT: forward and backward passes of one training step, weighted by "
                     "their FLOPs (attack backward = 1 forward, training backward = 2), as 'atzoo bench step-cost' "
                     "bounds it; deterministic, the same on any machine and under any load.")
    timed: dict[str, list[str]] = {}
    for entry in group.measured:
        if entry.measured_vs_at is not None and entry.measured_source:
            timed.setdefault(entry.measured_source, []).append(entry.label)
    for source, labels in timed.items():
        notes.append(f"x AT (measured) of {', '.join(labels)}: {source}.")
    for entry in group.measured:
        if entry.cost_note:
            notes.append(entry.cost_note.rstrip(".") + ".")
    if timed:  # a measured column is shown: say why some entries have no figure in it
        for entry in group.measured:
            if entry.measured_vs_at is None and entry.measured_note:
                notes.append(f"{entry.measured_note}; times from different hardware or settings, or a measure load "
                             "can move, are not comparable, so only the pass-count ratio is shown.")
    return notes
