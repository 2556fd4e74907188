"""Synthetic run directories for the compare and browser tests (no training needed).

Each run directory holds what ``atzoo train`` writes: ``config.yaml`` (from
``atzoo.config.to_yaml``), ``eval.json`` with the evaluator's keys, and a
``metrics.jsonl`` with per-epoch ``{"kind": "epoch", "seconds": ...}`` rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atzoo.config import build_config, to_yaml


def make_run(
    root: Path,
    name: str,
    method: str,
    *,
    seed: int = 0,
    clean: float | None = 80.0,
    pgd20: float | None = 50.0,
    autoattack: float | None = 45.0,
    eps: float = 8 / 255,
    norm: str = "linf",
    dataset: str = "cifar10",
    model: str = "resnet18",
    epoch_seconds: tuple[float, ...] = (10.0, 10.0),
    overrides: list[str] | None = None,
    n_examples: int = 1000,
    aa_n_examples: int | None = None,
    costs: list[dict[str, Any]] | None = None,
    provenance: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
) -> Path:
    """Writes one run directory under ``root`` and returns it.

    ``costs`` adds each epoch row's ``cost`` object (one per epoch), ``provenance`` and
    ``identity`` eval.json's ``provenance`` and ``dataset_identity`` (runs of atzoo
    versions that record them); without them the run looks like an older one.
    """
    run = root / name
    run.mkdir(parents=True)
    cfg = build_config(
        None, overrides or [], method={"name": method}, model={"name": model}, data={"name": dataset},
        run={"seed": seed}, attack={"norm": norm, "eps": eps},
    )
    (run / "config.yaml").write_text(to_yaml(cfg))
    payload: dict[str, Any] = {
        "method": method, "model": model, "dataset": dataset, "norm": norm, "eps": eps,
        "n_examples": n_examples, "clean_acc": clean, "pgd20_acc": pgd20, "autoattack_acc": autoattack,
        "per_class": None, "invariance_cos": None, "attacks": {}, "flags": {},
        "atzoo_version": "0.1.0", "timestamp": "2025-01-01T00:00:00",
    }
    if aa_n_examples is not None:
        payload["aa_n_examples"] = aa_n_examples
    if provenance is not None:
        payload["provenance"] = provenance
    if identity is not None:
        payload["dataset_identity"] = identity
    (run / "eval.json").write_text(json.dumps(payload))
    rows = [{"kind": "step", "epoch": 0, "step": 1, "loss": 2.3}]
    rows += [{"kind": "epoch", "epoch": i, "seconds": s} for i, s in enumerate(epoch_seconds)]
    for row, cost in zip(rows[1:], costs or []):
        row["cost"] = cost
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def standard_set(root: Path) -> list[Path]:
    """AT with two seeds, TRADES, AR-AT without AutoAttack, and MART at another eps."""
    return [
        make_run(root, "at-s0", "at", seed=0, clean=83.0, pgd20=46.0, autoattack=42.0, epoch_seconds=(10.0, 12.0)),
        make_run(root, "at-s1", "at", seed=1, clean=84.0, pgd20=47.0, autoattack=43.0, epoch_seconds=(11.0, 11.0)),
        make_run(root, "trades-s0", "trades", clean=81.0, pgd20=52.0, autoattack=48.5, epoch_seconds=(16.5, 16.5)),
        make_run(root, "arat-s0", "arat", clean=87.0, pgd20=53.0, autoattack=None, epoch_seconds=(12.5, 12.5)),
        make_run(root, "mart-s0", "mart", clean=82.0, pgd20=50.0, autoattack=47.0, eps=0.031),
    ]


def cost_row(cpu_s: float, wall_s: float, *, device: str = "cpu", device_name: str = "Test CPU 9000",
             precision: str = "no", threads: int = 1, processes: int = 1, host: str = "box-a",
             thread_s: float | None = None) -> dict[str, Any]:
    """One epoch's ``cost`` object as ``atzoo.engine.cost.CostMeter.row`` writes it (``thread_s``:
    the main thread's CPU time, by default equal to ``cpu_s`` as in a one-thread run)."""
    return {"cpu_s": cpu_s, "wall_s": wall_s, "thread_s": cpu_s if thread_s is None else thread_s, "steps": 10,
            "mixed": False, "device": device,
            "device_name": device_name, "processes": processes, "threads": threads, "precision": precision,
            "host": host}
