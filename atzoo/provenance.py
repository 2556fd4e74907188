"""Where a result came from: atzoo version, source commit, configuration hash, machine.

Every run records this once (``model_meta.json`` and ``eval.json``), so a leaderboard
assembled from run directories of several machines can say which row was made where
and with which code. Nothing here needs a network or a GPU; the git commit is ``None``
when atzoo is not run from a git checkout (an installed wheel).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

from atzoo.files.common import flatten

#: Flattened config keys that do not change what a run learns; runs that differ only in
#: these (and in the seed) are seeds of one configuration, and share a config hash.
NON_SEMANTIC_KEYS: frozenset[str] = frozenset({
    "run.seed", "run.name", "run.out", "run.trackers", "run.project", "run.log_every", "run.checkpoint_every",
    "run.checkpoint_every_steps", "run.keep_checkpoints", "run.evaluate", "run.deterministic",
    "data.root", "data.download", "data.num_workers", "data.eval_batch_size",
    "model.compile", "model.channels_last", "eval.batch_size", "diagnostics.every",
})

#: Hardware-profile keys that must match for two runs' step times to be divided
#: (:mod:`atzoo.engine.cost` records them, :mod:`atzoo.report.cost` compares them).
PROFILE_KEYS: tuple[str, ...] = ("device", "device_name", "processes", "threads", "precision")

#: The source tree whose commit is recorded (the folder above the ``atzoo`` package).
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """``$ATZOO_CACHE``, else ``~/.cache/atzoo``: atzoo's per-machine cache folder."""
    env = os.environ.get("ATZOO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "atzoo"


@functools.lru_cache(maxsize=1)
def git_commit(root: str | None = None) -> str | None:
    """``HEAD`` of the git checkout atzoo is imported from (``+dirty`` with local changes).

    ``None`` when atzoo is not inside a git work tree or git is not installed: an
    installed package has no commit to report, and that is said rather than guessed.
    """
    folder = root or str(SOURCE_ROOT)
    try:
        # The package must be tracked there: an installed copy inside some other checkout
        # (a virtualenv in a repository) has no commit of its own.
        tracked = _git(folder, "ls-files", "--error-unmatch", "--", "atzoo/__init__.py")
        head = _git(folder, "rev-parse", "HEAD") if tracked else None
        if head is None:
            return None
        dirty = _git(folder, "status", "--porcelain", "--untracked-files=no", "--", "atzoo")
        return head + ("+dirty" if dirty else "")
    except OSError:
        return None


def _git(folder: str, *args: str) -> str | None:
    result = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=10, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: Any) -> str:
    """The GPU's name for a CUDA device, the CPU model otherwise (``mps``: Apple GPU)."""
    import torch

    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        return torch.cuda.get_device_name(device)
    if kind == "mps":
        return f"Apple GPU ({cpu_model()})"
    return cpu_model()


def machine() -> dict[str, Any]:
    """Host name, CPU model and core count, GPU name (``None`` without one), OS."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"host": socket.gethostname(), "cpu": cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu,
            "platform": platform.platform(terse=True)}


def config_hash(flat_config: dict[str, Any], dataset_fingerprint: str | None = None) -> str:
    """Short hash of what a run learns: its configuration without seed and bookkeeping.

    Seeds of one configuration share it. With ``dataset_fingerprint`` the dataset is
    identified by its content instead of ``data.name`` (the path of an ``npz:`` file), so
    the same data mounted elsewhere gives the same hash.

    Args:
        flat_config: ``section.key`` -> value (:func:`atzoo.files.common.flatten`).
        dataset_fingerprint: :func:`atzoo.data.fingerprint.dataset_identity`'s fingerprint.
    """
    items = {k: v for k, v in flat_config.items() if k not in NON_SEMANTIC_KEYS}
    if dataset_fingerprint:
        items["data.name"] = dataset_fingerprint
    text = json.dumps(sorted((k, repr(v)) for k, v in items.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def provenance(*, seed: int | None = None, config: dict[str, Any] | None = None,
               dataset_fingerprint: str | None = None) -> dict[str, Any]:
    """The provenance record of a run made here, now.

    Args:
        seed: ``run.seed``.
        config: the nested or flattened config (``None``: no config hash).
        dataset_fingerprint: the data's content fingerprint, folded into the config hash.
    """
    from atzoo import __version__

    flat = flatten(config) if config is not None else None
    return {
        "atzoo_version": __version__, "git_commit": git_commit(), "seed": seed,
        "config_hash": config_hash(flat, dataset_fingerprint) if flat is not None else None,
        "machine": machine(),
    }


def evaluation_provenance(meta: dict[str, Any] | None) -> dict[str, Any]:
    """eval.json's ``provenance``: the training record from the model's meta (version,
    commit, seed, config hash and machine of the run; ``None`` where the meta predates
    them) plus ``evaluated``: version, commit and machine of this evaluation."""
    recorded = (meta or {}).get("provenance")
    here = provenance()
    base = {"atzoo_version": None, "git_commit": None, "seed": None, "config_hash": None, "machine": None}
    base.update(recorded if isinstance(recorded, dict) else {})
    base["evaluated"] = {k: here[k] for k in ("atzoo_version", "git_commit", "machine")}
    return base
