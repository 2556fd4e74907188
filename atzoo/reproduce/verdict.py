"""Paper against measurement: per-row verdicts and the orderings a table claims.

Per row and metric: the mean ± sample std over the finished seeds, the difference to the
paper's number, and a verdict:

* ``within`` -- ``|measured mean - paper| <= tolerance`` for every metric the paper gives;
* ``outside`` -- at least one metric is further away;
* ``not run yet`` -- no seed has finished;
* ``no paper number`` -- the paper has none for this row (a reference row);
* ``scaled`` -- a scaled reproduction: absolute numbers are not compared, orderings are.

Orderings (``clean: arat > at``) are checked per setting, on the paper's numbers and on
the measured means, so a report says which of the paper's orderings held.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atzoo.report.leaderboard import Stat
from atzoo.report.runs import RunRecord, load_run
from atzoo.reproduce.manifest import INFO_METRICS, Claim, Row, Table
from atzoo.reproduce.runner import PlannedRun, stored_config


def _metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of the run's ``metrics.jsonl`` (none without the file)."""
    from atzoo.files.rundir import read_metrics

    path = run_dir / "metrics.jsonl"
    return read_metrics(path) if path.is_file() else []


def grad_similarity(run_dir: Path) -> float | None:
    """Mean ``diag/grad_cos`` over the run's diagnostics rows (the ablation's third column)."""
    values = [row["diag/grad_cos"] for row in _metrics_rows(run_dir)
              if isinstance(row.get("diag/grad_cos"), (int, float)) and math.isfinite(row["diag/grad_cos"])]
    return sum(values) / len(values) if values else None


def steps_per_epoch(run_dir: Path) -> int | None:
    """Optimizer steps of the first epoch (``step`` of its complete ``kind: epoch`` row)."""
    first = next((row for row in _metrics_rows(run_dir) if row.get("kind") == "epoch" and not row.get("partial")), None)
    ok = first is not None and first.get("epoch") == 0 and isinstance(first.get("step"), int)
    return int(first["step"]) if ok else None  # type: ignore[index]


@dataclass
class RowResult:
    """A row with its finished runs, aggregated metrics, differences and verdict."""

    row: Row
    planned: int
    runs: list[RunRecord] = field(default_factory=list)
    measured: dict[str, Stat] = field(default_factory=dict)
    verdict: str = "not run yet"
    failing: list[str] = field(default_factory=list)

    def difference(self, metric: str) -> float | None:
        stat, paper = self.measured.get(metric), self.row.paper.get(metric)
        return None if stat is None or paper is None else stat.mean - paper

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.row.id, "label": self.row.label, "method": self.row.method, "recipe": self.row.recipe,
            "overrides": list(self.row.overrides), "paper": dict(self.row.paper), "paper_runs": self.row.paper_runs,
            "tolerance": dict(self.row.tolerance), "seeds_planned": self.planned, "seeds_finished": len(self.runs),
            "measured": {k: v.to_dict() for k, v in self.measured.items()},
            "difference": {k: self.difference(k) for k in self.row.paper}, "verdict": self.verdict,
            "outside": list(self.failing), "runs": [str(r.path) for r in self.runs], "note": self.row.note,
        }


def measure(runs: list[RunRecord]) -> dict[str, Stat]:
    """Mean ± std of every metric the runs have (seconds per batch from the epoch rows)."""
    stats = {
        "clean": Stat.of([r.clean for r in runs]), "pgd20": Stat.of([r.pgd20 for r in runs]),
        "autoattack": Stat.of([r.autoattack for r in runs]),
        "grad_sim": Stat.of([grad_similarity(r.path) for r in runs]),
        "seconds_per_epoch": Stat.of([r.seconds_per_epoch for r in runs]),
        "seconds_per_batch": Stat.of([_per_batch(r) for r in runs]),
    }
    return {k: v for k, v in stats.items() if v is not None}


def _per_batch(run: RunRecord) -> float | None:
    steps = steps_per_epoch(run.path)
    return run.seconds_per_epoch / steps if run.seconds_per_epoch is not None and steps else None


def attach_cost_ratios(results: list[RowResult]) -> None:
    """``cost_vs_at``: a row's seconds per epoch over the ``at`` row's of its setting."""
    for result in results:
        at = next((r for r in results if r.row.setting == result.row.setting and r.row.key == "at"), None)
        mine = result.measured.get("seconds_per_epoch")
        ref = at.measured.get("seconds_per_epoch") if at is not None else None
        if mine is not None and ref is not None and ref.mean > 0:
            result.measured["cost_vs_at"] = Stat(mean=mine.mean / ref.mean, std=None, n=min(mine.n, ref.n))


def decide(result: RowResult, scaled: bool) -> None:
    """Sets ``verdict`` and ``failing`` from the measured means, the paper and the tolerance."""
    if not result.runs:
        result.verdict = "not run yet"
        return
    compared = [m for m in result.row.paper if m not in INFO_METRICS]
    if scaled:
        result.verdict = "scaled: see orderings"
        return
    if not compared:
        result.verdict = "no paper number"
        return
    missing = [m for m in compared if m not in result.measured]
    result.failing = [m for m in compared if m in result.measured
                      and abs(result.difference(m) or 0.0) > result.row.tolerance.get(m, 0.0)]
    if result.failing:
        result.verdict = "outside tolerance"
    elif missing:
        result.verdict = f"not measured: {', '.join(missing)}"
    else:
        result.verdict = "within tolerance"


def _load(run_dir: Path) -> RunRecord:
    """A finished run, its config read as today's atzoo reads it (keys newer than the run at
    their defaults), so that seeds made by different atzoo versions still group as one entry."""
    record = load_run(run_dir)
    if record.config and (run_dir / "config.yaml").is_file():
        record = dataclasses.replace(record, config=stored_config(run_dir / "config.yaml"))
    return record


def row_results(table: Table, planned: list[PlannedRun], scaled: bool) -> list[RowResult]:
    """One :class:`RowResult` per planned row, from the runs that have ``eval.json``."""
    results: list[RowResult] = []
    rows = {p.row.id: p.row for p in planned}
    for row in rows.values():
        mine = [p for p in planned if p.row.id == row.id]
        runs = [_load(p.run_dir) for p in mine if (p.run_dir / "eval.json").is_file()]
        results.append(RowResult(row=row, planned=len(mine), runs=runs, measured=measure(runs)))
    attach_cost_ratios(results)
    for result in results:
        decide(result, scaled)
    return results


# --------------------------------------------------------------------------- orderings


@dataclass
class ClaimCheck:
    """One ordering in one setting: on the paper's numbers and on the measured means."""

    claim: Claim
    setting: str
    paper: bool | None  # None: the paper lacks a number it needs
    measured: bool | None  # None: not measured (yet)
    paper_gap: float | None
    measured_gap: float | None
    noise: float | None  # the larger seed std of the two rows (None with one seed)
    sampling: float | None = None  # standard error of the measured gap from the test-set size

    @property
    def outcome(self) -> str:
        if self.measured is None:
            return "not measured"
        text = "held" if self.measured else "did not hold"
        gap = abs(self.measured_gap) if self.measured_gap is not None else None
        if gap is not None and self.sampling is not None and gap <= 2 * self.sampling:
            text += f" (within 2 standard errors of the test sample, ±{2 * self.sampling:.1f})"
        elif gap is not None and self.noise is not None and gap <= self.noise:
            text += " (within seed noise)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim.text, "says": self.claim.says, "setting": self.setting, "paper": self.paper,
                "measured": self.measured, "outcome": self.outcome, "paper_gap": self.paper_gap,
                "measured_gap": self.measured_gap, "seed_noise": self.noise, "sampling_se": self.sampling}


#: Metrics that are accuracies (%) on a test sample, and the RunRecord field with its size.
_SAMPLE_SIZE = {"clean": "n_examples", "pgd20": "n_examples", "autoattack": "aa_n_examples"}


def sampling_error(result: RowResult | None, metric: str) -> float | None:
    """Binomial standard error (points) of a row's mean accuracy: sqrt(p (1 - p) / n) / sqrt(seeds).

    ``n`` is the number of test examples the metric was measured on; ``None`` for other
    metrics or when the size is unknown.
    """
    stat = result.measured.get(metric) if result is not None else None
    sizes = [getattr(r, _SAMPLE_SIZE[metric]) for r in result.runs] if stat and metric in _SAMPLE_SIZE else []
    if not sizes or any(not n for n in sizes):
        return None
    p = min(max(stat.mean / 100.0, 0.0), 1.0)  # type: ignore[union-attr]
    return 100.0 * math.sqrt(p * (1.0 - p) / min(sizes)) / math.sqrt(len(sizes))


def _gap(claim: Claim, left: float | None, right: float | None) -> float | None:
    """``left - (right + offset)``: positive when ``>`` holds."""
    if left is None or (claim.b is not None and right is None):
        return None
    return left - ((right or 0.0) + claim.offset)


def check_claims(table: Table, results: list[RowResult]) -> list[ClaimCheck]:
    """Every ordering of the table in every setting that has its rows."""
    checks: list[ClaimCheck] = []
    for setting in table.settings:
        rows = {r.key: r for r in table.rows if r.setting == setting}
        measured = {r.row.key: r for r in results if r.row.setting == setting}
        for claim in table.orderings:
            if claim.a not in rows or (claim.b is not None and claim.b not in rows):
                continue
            if claim.a not in measured and claim.b not in measured:
                continue  # neither row was selected in this setting
            paper_a = rows[claim.a].paper.get(claim.metric)
            paper_b = rows[claim.b].paper.get(claim.metric) if claim.b else None
            paper_gap = _gap(claim, paper_a, paper_b)
            stat_a = measured[claim.a].measured.get(claim.metric) if claim.a in measured else None
            stat_b = measured[claim.b].measured.get(claim.metric) if claim.b in measured else None
            m_gap = _gap(claim, stat_a.mean if stat_a else None, stat_b.mean if stat_b else None)
            stds = [s.std for s in (stat_a, stat_b) if s is not None and s.std is not None]
            errors = [sampling_error(measured.get(k), claim.metric) for k in (claim.a, claim.b) if k is not None]
            sampling = math.sqrt(sum(e * e for e in errors)) if errors and all(e is not None for e in errors) else None
            checks.append(ClaimCheck(
                claim, setting,
                paper=None if paper_gap is None else claim.holds(paper_a, paper_b),  # type: ignore[arg-type]
                measured=None if m_gap is None else claim.holds(stat_a.mean, stat_b.mean if stat_b else None),  # type: ignore[union-attr]
                paper_gap=paper_gap, measured_gap=m_gap, noise=max(stds) if stds else None, sampling=sampling,
            ))
    return checks
