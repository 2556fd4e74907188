"""Step-cost ratios recorded once per machine, for ``atzoo compare`` to fall back on.

``atzoo bench step-cost`` measures every method's training step against AT's in one
process, on one machine, round by round, so its ratios do not depend on the machine's
load. Each run of it stores the ratios in a small JSON file per hardware profile::

    $ATZOO_CACHE/step_cost/<device>-<device name>-<precision>.json   (default ~/.cache/atzoo)

    {"profile": {"device": "cpu", "device_name": "AMD EPYC 7B13", "precision": "no", "host": ...},
     "methods": {"trades": {"ratio": 1.41, "basis": "CPU time", "model": "resnet18",
                            "batch_size": 32, "measured": "2026-11-29T18:00:00+00:00",
                            "atzoo_version": "0.1.0"}, ...}}

A later benchmark on the same profile updates the methods it measured and keeps the
others. When ``atzoo compare`` meets runs whose own step times cannot be divided (AT
ran on another device or precision), it shows the ratio recorded for the profile the
run was made on, and says so; without a record it shows none. Records made on another
machine can be copied into the folder.
Only plain measurements are recorded: a benchmark with ``section.key=value`` overrides or
variant rows measures something else than the methods' defaults.
"""

from __future__ import annotations

import math

import re
from pathlib import Path
from typing import Any

from atzoo.files.common import atomic_write_json
from atzoo.errors import AtzooError
from atzoo.provenance import cache_dir
from atzoo.precision import precision_label
from atzoo.files.safe_read import read_json_file

REFERENCE = "at"


def records_dir() -> Path:
    """``$ATZOO_CACHE/step_cost`` (default ``~/.cache/atzoo/step_cost``)."""
    return cache_dir() / "step_cost"


def record_name(device: str, device_name: str, precision: str) -> str:
    """File name of a profile's record, e.g. ``cpu-amd-epyc-7b13-no.json``."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{device}-{device_name}-{precision}".lower()).strip("-")
    return f"{slug}.json"


def _basis(device: str) -> tuple[str, str]:
    """(``MethodCost.as_dict`` key, description): CPU time on the CPU, wall time elsewhere."""
    return ("ratio_to_at_cpu_time", "CPU time") if device == "cpu" else ("ratio_to_at", "wall time")


def record_step_cost(payload: dict[str, Any], folder: Path | None = None) -> Path | None:
    """Stores the ratios of a ``StepCostResult.as_dict()`` payload; returns the file.

    The rows go to the record of their own precision: the run's rows to the profile of
    ``--precision``/``--attack-precision`` (:func:`atzoo.precision.profile`), the fp32 twins
    (``<method>@fp32``) to the fp32 profile under their method's name.

    Returns ``None`` (nothing written) for a benchmark with overrides or variants, or
    when the cache folder cannot be written.
    """
    from atzoo.precision import FP32_TWIN_SUFFIX as FP32_SUFFIX
    from atzoo.precision import profile as precision_profile

    settings = payload["settings"]
    if settings.get("overrides") or settings.get("variants"):
        return None
    main = precision_profile(settings["precision"], settings.get("attack_precision", "same"))
    rows = [r for r in payload["methods"] if not r["method"].endswith(FP32_SUFFIX)]
    twins = [{**r, "method": r["method"][: -len(FP32_SUFFIX)]} for r in payload["methods"]
             if r["method"].endswith(FP32_SUFFIX)]
    if twins:
        _record(payload, twins, precision_profile("fp32"), folder)
    return _record(payload, rows, main, folder)


def _record(payload: dict[str, Any], rows: list[dict[str, Any]], precision: str, folder: Path | None) -> Path | None:
    """Merges ``rows``' ratios into the record of ``precision`` on the payload's device."""
    settings, env = payload["settings"], payload["environment"]
    device = str(env["device"]).split(":")[0]
    key, basis = _basis(device)
    profile = {"device": device, "device_name": env["device_name"], "precision": precision,
               "host": env.get("host"), "threads": env.get("torch_threads")}
    path = (folder or records_dir()) / record_name(device, env["device_name"], precision)
    methods = dict(read_record(path).get("methods", {}))
    for row in rows:
        if row.get(key) is None or not row.get("finite", True):
            continue
        methods[row["method"]] = {
            "ratio": row[key], "basis": basis, "model": settings["model"], "batch_size": settings["batch_size"],
            "measured": env.get("timestamp"), "atzoo_version": env.get("atzoo_version"),
        }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"profile": profile, "methods": methods})
    except OSError:
        return None
    return path


def read_record(path: Path) -> dict[str, Any]:
    """A record file's content ({} when absent or unreadable: records are a convenience)."""
    if not path.is_file():
        return {}
    try:
        values = read_json_file(path, "step-cost record")
    except AtzooError:
        return {}
    return values if isinstance(values, dict) and isinstance(values.get("methods", {}), dict) else {}


def lookup_ratio(profile: dict[str, Any], method: str, folder: Path | None = None) -> tuple[float, str] | None:
    """(ratio to AT, where it comes from) recorded for ``method`` on ``profile``'s hardware.

    Args:
        profile: a run's hardware profile (``device``, ``device_name``, ``precision``).
        method: the registered method name.
    """
    if method == REFERENCE:
        return None
    try:
        name = record_name(profile["device"], profile["device_name"], profile["precision"])
    except KeyError:
        return None
    entry = read_record((folder or records_dir()) / name).get("methods", {}).get(method)
    ratio = entry.get("ratio") if isinstance(entry, dict) else None
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
        return None  # a damaged record (negative, zero or NaN time) is no record
    assert isinstance(entry, dict)
    source = (f"atzoo bench step-cost ({entry.get('basis', '?')}, {entry.get('model', '?')} batch "
              f"{entry.get('batch_size', '?')}) on {profile['device_name']}, precision {precision_label(profile['precision'])}")
    return float(entry["ratio"]), source
