"""Reading run directories for ``atzoo compare``.

A run directory (written by ``atzoo train``, see ``docs/architecture.md``) holds
``eval.json`` (the evaluator's accuracies), ``config.yaml`` (the resolved
:class:`~atzoo.config.RunConfig`) and ``metrics.jsonl`` (the training log). Only
``eval.json`` is required: without ``config.yaml`` the seed and configuration are
unknown, without ``metrics.jsonl`` the training cost is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atzoo.files.common import flatten
from atzoo.errors import AtzooError, brief
from atzoo.provenance import NON_SEMANTIC_KEYS, config_hash
from atzoo.files.safe_read import MAX_METRICS_BYTES, read_json_file, read_jsonl_file, read_yaml_file

#: eval.json keys compare needs (the rest of the evaluator's keys are optional here).
REQUIRED_EVAL_KEYS: tuple[str, ...] = ("method", "model", "dataset", "norm", "eps", "clean_acc")

#: The largest metrics.jsonl compare reads (a long run with run.log_every=1 logs ~20 MB).
METRICS_MAX_BYTES = MAX_METRICS_BYTES

#: Keys of a metrics.jsonl row that hold the wall-clock seconds of one training epoch,
#: in the order they are looked up. The engine writes ``{"kind": "epoch", ...}`` rows
#: (see ``atzoo.engine.rundir.MetricsLog``, read through :mod:`atzoo.files.rundir`); in those, a plain ``seconds`` counts too.
EPOCH_SECONDS_KEYS: tuple[str, ...] = ("epoch_seconds", "epoch_time", "epoch_time_s", "seconds_per_epoch")
EPOCH_ROW_KEYS: tuple[str, ...] = EPOCH_SECONDS_KEYS + ("seconds", "time_s", "elapsed")

#: Keys of an epoch row's ``cost`` object (``atzoo.engine.cost.CostMeter.row``) compare needs.
COST_KEYS: tuple[str, ...] = ("cpu_s", "wall_s", "device", "device_name", "processes", "threads", "precision")


@dataclass
class RunRecord:
    """What compare needs from one run directory.

    Attributes:
        path: the run directory.
        method, model, dataset: from eval.json.
        norm, eps: the threat model the run was *evaluated* under.
        clean, pgd20, autoattack: accuracies in percent (``None`` when not run); each attack
            alone (``autoattack``: standard AutoAttack alone, as the papers report it).
        worst_case: correct under every attack run on the images (``None`` with one attack).
        weights: fingerprint of the evaluated weights (``None`` for older eval.json files).
        test_digest: content digest of the test split evaluated on (``None``: older files).
        n_examples: test examples of the clean and PGD evaluation.
        aa_n_examples: test examples AutoAttack ran on (``eval.n_ex``), if it ran.
        seed: ``run.seed`` from config.yaml (``None`` without it).
        config: flattened config (``section.key`` -> value); empty without config.yaml.
        epoch_seconds: wall-clock seconds of each completed training epoch.
        epoch_costs: the ``cost`` object of each completed epoch that has one
            (:mod:`atzoo.engine.cost`: CPU and wall seconds of the training steps and the
            hardware profile); empty for runs made before atzoo recorded it.
        dataset_name: readable dataset name (``npz:cifar10_subset.npz``).
        dataset_fingerprint: content hash of the data (:mod:`atzoo.data.fingerprint`);
            ``None`` for runs evaluated before atzoo recorded it.
        provenance: atzoo version, git commit, seed, config hash, host and machine
            (``None`` where unknown).
    """

    path: Path
    method: str
    model: str
    dataset: str
    norm: str
    eps: float
    clean: float | None
    pgd20: float | None
    autoattack: float | None
    worst_case: float | None = None
    weights: str | None = None
    test_digest: str | None = None
    threat_source: str | None = None
    n_examples: int | None = None
    aa_n_examples: int | None = None
    seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_costs: list[dict[str, Any]] = field(default_factory=list)
    dataset_name: str = ""
    dataset_fingerprint: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dataset_name = self.dataset_name or self.dataset

    @property
    def dataset_key(self) -> str:
        """What identifies the data: its content fingerprint, else (older runs) its name."""
        return f"sha:{self.dataset_fingerprint}" if self.dataset_fingerprint else f"name:{self.dataset}"

    @property
    def test_key(self) -> str:
        """What identifies the test data measured on: its content digest, else the dataset key."""
        return f"test:{self.test_digest}" if self.test_digest else self.dataset_key

    @property
    def seconds_per_epoch(self) -> float | None:
        """Mean epoch time, or ``None`` when the log has no epoch rows."""
        return sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else None

    @property
    def label(self) -> str:
        """Method name plus the weight-averaging variant (``arat+swa``)."""
        suffix = "+swa" if self.config.get("averaging.swa") else ""
        suffix += "+ema" if self.config.get("averaging.ema") else ""
        return self.method + suffix

    def fingerprint(self) -> tuple[tuple[str, str], ...]:
        """The configuration without seed and bookkeeping: equal for seeds of one setting.

        With a dataset fingerprint, ``data.name`` (a path for ``npz:`` data) is left out:
        the runs of a table already share the data's content.
        """
        ignored = NON_SEMANTIC_KEYS | ({"data.name"} if self.dataset_fingerprint else set())
        return tuple(sorted((k, repr(v)) for k, v in self.config.items() if k not in ignored))


def _read_json(path: Path) -> Any:
    return read_json_file(path, path.name)


def _accuracy(payload: dict[str, Any], key: str, where: Path) -> float | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AtzooError(f"{where}: '{key}' must be a percentage or null, got {brief(value)}")
    if not 0.0 <= float(value) <= 100.0:
        raise AtzooError(f"{where}: '{key}' must be a percentage in [0, 100], got {brief(value)}")
    return float(value)


def read_eval(path: Path) -> dict[str, Any]:
    """Loads and checks ``eval.json``; raises AtzooError naming a missing or bad key."""
    payload = _read_json(path)
    if not isinstance(payload, dict):
        raise AtzooError(f"{path} must hold a JSON object with keys {', '.join(REQUIRED_EVAL_KEYS)}")
    missing = [k for k in REQUIRED_EVAL_KEYS if k not in payload]
    if missing:
        raise AtzooError(f"{path} lacks key(s) {', '.join(missing)} (an eval.json written by 'atzoo eval' has them)")
    eps = payload["eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
        raise AtzooError(f"{path}: 'eps' must be a number in (0, 1], got {brief(eps)}")
    if payload["norm"] not in ("linf", "l2"):
        raise AtzooError(f"{path}: 'norm' must be 'linf' or 'l2', got {brief(payload['norm'])}")
    return payload


def read_config(path: Path) -> dict[str, Any]:
    """Flattened ``config.yaml`` (empty when absent)."""
    if not path.is_file():
        return {}
    values = read_yaml_file(path, "config", error=AtzooError)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise AtzooError(f"{path} must be a mapping of config sections")
    return flatten(values)


def read_epoch_rows(path: Path) -> list[dict[str, Any]]:
    """The timing row of each completed training epoch from ``metrics.jsonl`` ([] when absent).

    An epoch row is a ``kind: epoch`` row with one of :data:`EPOCH_ROW_KEYS`, or a row
    without ``kind`` that has one of :data:`EPOCH_SECONDS_KEYS`; rows marked
    ``partial`` (an epoch cut short by ``run.max_steps`` or an interruption) do not
    count. Where a resumed run logged an epoch twice, the last row of that epoch wins.
    The rows are read by :func:`atzoo.files.safe_read.read_jsonl_file`, as ``reproduce --collect``
    reads them: a torn last line is ignored; any other bad line is an error naming it.
    """
    if not path.is_file():
        return []
    by_epoch: dict[Any, dict[str, Any]] = {}
    for number, row in enumerate(read_jsonl_file(path, "metrics log", limit=METRICS_MAX_BYTES)):
        if _epoch_seconds(row) is not None and not row.get("partial"):
            by_epoch[row.get("epoch", f"row {number}")] = row
    return list(by_epoch.values())


def read_epoch_seconds(path: Path) -> list[float]:
    """Wall-clock seconds of each completed epoch (see :func:`read_epoch_rows`)."""
    return [_epoch_seconds(row) for row in read_epoch_rows(path)]  # type: ignore[misc]


def epoch_cost(row: dict[str, Any]) -> dict[str, Any] | None:
    """An epoch row's ``cost`` object when it is complete and its times are positive numbers."""
    cost = row.get("cost")
    if not isinstance(cost, dict) or any(k not in cost for k in COST_KEYS):
        return None
    times = [cost["cpu_s"], cost["wall_s"]]
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0 for t in times):
        return None
    return cost


def _epoch_seconds(row: Any) -> float | None:
    if not isinstance(row, dict):
        return None
    if row.get("kind") not in (None, "epoch"):
        return None
    keys = EPOCH_ROW_KEYS if row.get("kind") == "epoch" else EPOCH_SECONDS_KEYS
    for key in keys:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            return float(value)
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def load_run(path: str | Path) -> RunRecord:
    """Reads one run directory.

    Raises:
        AtzooError: ``path`` does not exist, is not a directory, has no ``eval.json``,
            or one of its files is malformed.
    """
    path = Path(path)
    if not path.exists():
        raise AtzooError(f"run directory not found: {path}")
    if not path.is_dir():
        raise AtzooError(f"{path} is not a run directory (expected a folder holding eval.json)")
    eval_path = path / "eval.json"
    if not eval_path.is_file():
        if is_run_dir(path):
            raise AtzooError(f"{path} has no eval.json: evaluate the run first with 'atzoo eval {path}'")
        raise AtzooError(f"{path} has no eval.json: evaluate the run first ('atzoo eval RUN_DIR'); {path} holds no "
                         "run directory either (folders written by 'atzoo train')")
    payload = read_eval(eval_path)
    config = read_config(path / "config.yaml")
    seed = config.get("run.seed")
    seed = seed if isinstance(seed, int) else None
    n_examples = _int_or_none(payload.get("n_examples"))
    rows = read_epoch_rows(path / "metrics.jsonl")
    identity = payload.get("dataset_identity")
    identity = identity if isinstance(identity, dict) and isinstance(identity.get("fingerprint"), str) else {}
    test = identity.get("test") if isinstance(identity.get("test"), dict) else {}
    weights = payload.get("weights_fingerprint")
    return RunRecord(
        path=path, method=str(payload["method"]), model=str(payload["model"]), dataset=str(payload["dataset"]),
        norm=str(payload["norm"]), eps=float(payload["eps"]),
        clean=_accuracy(payload, "clean_acc", eval_path), pgd20=_accuracy(payload, "pgd20_acc", eval_path),
        autoattack=_autoattack_alone(payload, eval_path),
        worst_case=_worst_case(payload, eval_path),
        weights=weights if isinstance(weights, str) else None,
        test_digest=test.get("digest") if isinstance(test.get("digest"), str) else None,
        threat_source=str(payload["threat_model_source"]) if payload.get("threat_model_source") else None,
        n_examples=n_examples,
        aa_n_examples=_int_or_none(payload.get("aa_n_examples")),
        seed=seed, config=config,
        epoch_seconds=[_epoch_seconds(r) for r in rows],  # type: ignore[misc]
        epoch_costs=[c for c in map(epoch_cost, rows) if c is not None],
        dataset_name=str(identity.get("name") or payload["dataset"]),
        dataset_fingerprint=identity.get("fingerprint"),
        provenance=run_provenance(payload, config, seed, identity.get("fingerprint")),
    )


def _autoattack_alone(payload: dict[str, Any], where: Path) -> float | None:
    """AutoAttack alone. Files written before atzoo kept it apart held the worst case over
    every attack in ``autoattack_acc`` and AutoAttack alone in ``accuracy_alone.aa``."""
    older = payload.get("accuracy_alone")
    if "worst_case_acc" not in payload and isinstance(older, dict) and older.get("aa") is not None:
        return _accuracy(older, "aa", where)
    return _accuracy(payload, "autoattack_acc", where)


def _worst_case(payload: dict[str, Any], where: Path) -> float | None:
    """The per-example worst case over every attack run (older files: their ``autoattack_acc``)."""
    if "worst_case_acc" in payload:
        return _accuracy(payload, "worst_case_acc", where)
    older = payload.get("accuracy_alone")
    return _accuracy(payload, "autoattack_acc", where) if isinstance(older, dict) and "aa" in older else None


#: The provenance fields of a leaderboard row, in order.
PROVENANCE_KEYS: tuple[str, ...] = ("atzoo_version", "git_commit", "seed", "config_hash", "weights", "train_data",
                                     "host", "machine")


def run_provenance(payload: dict[str, Any], config: dict[str, Any], seed: int | None,
                   fingerprint: str | None) -> dict[str, Any]:
    """Version, commit, seed, config hash, host and machine of a run.

    From eval.json's ``provenance`` (the training record); for older runs the version
    comes from eval.json, the seed and the config hash from config.yaml, and commit,
    host and machine are unknown (``None``).
    """
    recorded = payload.get("provenance")
    recorded = recorded if isinstance(recorded, dict) else {}
    machine = recorded.get("machine") if isinstance(recorded.get("machine"), dict) else {}
    gpu = machine.get("gpu")
    identity = payload.get("dataset_identity") if isinstance(payload.get("dataset_identity"), dict) else {}
    train = identity.get("train") if isinstance(identity.get("train"), dict) else {}
    return {
        "atzoo_version": recorded.get("atzoo_version") or payload.get("atzoo_version"),
        "git_commit": recorded.get("git_commit"),
        "seed": recorded.get("seed") if isinstance(recorded.get("seed"), int) else seed,
        "config_hash": recorded.get("config_hash") or (config_hash(config, fingerprint) if config else None),
        "weights": payload.get("weights_fingerprint"),
        # The training data (validation split carved out included) is provenance, not what
        # the numbers were measured on: two runs on one test set rank together.
        "train_data": train.get("digest") if isinstance(train.get("digest"), str) else None,
        "host": machine.get("host"),
        "machine": (f"{machine.get('cpu')}" + (f" + {gpu}" if gpu else "")) if machine.get("cpu") else None,
    }


def is_run_dir(path: Path) -> bool:
    """A folder ``atzoo train`` wrote (or one holding an ``eval.json``)."""
    from atzoo.files.rundir import looks_like_run

    return (path / "eval.json").is_file() or looks_like_run(path)


def find_run_dirs(path: Path) -> list[Path]:
    """The run directories at or below ``path``, sorted (a run's own sub-folders are not searched)."""
    if is_run_dir(path):
        return [path]
    found: list[Path] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += find_run_dirs(child)
    return found


def collect_runs(paths: list[str | Path]) -> tuple[list[RunRecord], list[Path]]:
    """Reads every run directory given or found below a given folder (each once, in order).

    Runs without ``eval.json`` (not evaluated yet, or still training) are returned apart,
    so that compare can skip them with one warning.

    Raises:
        AtzooError: no paths; a path that is missing, a file, or a folder without runs; a
            malformed run; or no evaluated run at all.
    """
    if not paths:
        raise AtzooError("no run directories given: pass one or more folders written by 'atzoo train'")
    seen: set[Path] = set()
    runs: list[RunRecord] = []
    skipped: list[Path] = []
    for raw in paths:
        path = Path(raw)
        found = find_run_dirs(path) if path.is_dir() else []
        for run_dir in found or [path]:  # no run found: load_run names the problem
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            if found and not (run_dir / "eval.json").is_file():
                skipped.append(run_dir)
            else:
                runs.append(load_run(run_dir))
    if not runs:
        raise AtzooError(f"none of the {len(skipped)} run(s) has an eval.json yet; evaluate them first with "
                         f"'atzoo eval {skipped[0]}'")
    return runs, skipped


def load_runs(paths: list[str | Path]) -> list[RunRecord]:
    """The evaluated runs among ``paths`` (see :func:`collect_runs`)."""
    return collect_runs(paths)[0]
