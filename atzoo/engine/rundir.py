"""The run directory: naming, the never-overwrite rule, and the metrics log.

Layout of ``runs/<name>/`` (or ``--out DIR``)::

    config.yaml          the resolved RunConfig (atzoo.config.to_yaml)
    metrics.jsonl        one JSON object per line (see MetricsLog)
    checkpoints/         step-<global step>/ directories (atzoo.engine.checkpoint)
    model.safetensors    the deployable plain model (the weight average when SWA/EMA is on)
    model_meta.json      what load_run_model needs to rebuild it
    model_last.safetensors   the last iterate, only when SWA/EMA is on
    eval.json            the evaluator's payload
    tensorboard/         Accelerate's TensorBoard tracker (when enabled)

An existing, non-empty directory is never written to unless ``--force`` (replace it) or
``--resume`` (continue it) is given, and that is decided before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from atzoo.config import RunConfig
from atzoo.errors import AtzooError, ConfigError

#: ``config.yaml`` plus one of these marks a directory as an atzoo run: ``--force`` only
#: deletes such directories, never an arbitrary folder given by mistake.
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "model.safetensors", "eval.json")


def looks_like_run(path: Path) -> bool:
    """Whether ``path`` holds an atzoo run (its config and some of its output)."""
    return (path / "config.yaml").is_file() and any((path / m).exists() for m in RUN_MARKERS)


def default_run_name(cfg: RunConfig) -> str:
    """``<method>-<model>-<dataset>-s<seed>``, with path-unsafe characters replaced."""
    dataset = Path(cfg.data.name).stem if cfg.data.name.startswith("npz:") else cfg.data.name
    name = f"{cfg.method.name}-{cfg.model.name}-{dataset}-s{cfg.run.seed}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def format_run_name(template: str, cfg: RunConfig) -> str:
    """Fills ``{method}``, ``{model}``, ``{dataset}`` and ``{seed}`` in a ``run.name``.

    Recipes name their runs with ``{seed}`` (``arat_swa-resnet18-cifar10-s{seed}``) so
    that ``--seed 1`` gets its own directory instead of colliding with seed 0.

    Raises:
        ConfigError: the template names an unknown field.
    """
    dataset = Path(cfg.data.name).stem if cfg.data.name.startswith("npz:") else cfg.data.name
    fields = {"method": cfg.method.name, "model": cfg.model.name, "dataset": dataset, "seed": cfg.run.seed}
    try:
        name = template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"run.name '{template}' has an unknown placeholder ({exc}); valid: {{method}}, {{model}}, {{dataset}}, {{seed}}"
        ) from None
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def resolve_run_dir(cfg: RunConfig, out: str | Path | None = None) -> Path:
    """``out``, else ``run.out``, else ``runs/<run.name or the default name>``."""
    if out is not None:
        return Path(out)
    if cfg.run.out:
        return Path(cfg.run.out)
    return Path("runs") / (format_run_name(cfg.run.name, cfg) if cfg.run.name else default_run_name(cfg))


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_run_dir(path: Path, *, force: bool, resume: bool) -> None:
    """Refuses, before anything is written, to use ``path`` in a way that loses data.

    Raises:
        AtzooError: ``--force`` with ``--resume``; ``path`` is a file; it is a non-empty
            directory and neither flag is given; ``--force`` on a non-empty directory
            that is not an atzoo run; or the location cannot be written.
    """
    if force and resume:
        raise AtzooError("--force and --resume cannot be combined: --force starts over, --resume continues")
    if path.exists() and not path.is_dir():
        raise AtzooError(f"run directory {path} exists and is a file")
    if is_nonempty_dir(path) and not (force or resume):
        raise AtzooError(f"run directory {path} already exists; use --resume to continue it or --force to replace it")
    if force and is_nonempty_dir(path) and not looks_like_run(path):
        raise AtzooError(f"--force only replaces atzoo run directories, and {path} holds other files")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():  # root may write anywhere, but never below a file
        raise AtzooError(f"cannot write the run directory {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise AtzooError(f"cannot write the run directory {path}: {ancestor} is not writable")


def prepare_run_dir(path: Path, *, force: bool) -> None:
    """Creates ``path`` (after :func:`check_run_dir`); ``force`` deletes an old run first."""
    try:
        if force and path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AtzooError(f"cannot write the run directory {path}: {exc.strerror or exc}") from None


class MetricsLog:
    """Append-only ``metrics.jsonl``; every row is one JSON object with a ``kind``.

    Kinds: ``step`` (every ``run.log_every`` optimizer steps: epoch, step, loss, loss
    parts, train accuracy, lr, images/s), ``epoch`` (epoch summary with seconds and
    images/s), ``epoch_start`` (what ``Method.on_epoch_start`` returned),
    ``diagnostics``, ``event`` (resume, checkpoint fallback) and ``final`` (which
    weights were exported).

    Only the main process writes. The log's size is stored in each checkpoint so that a
    resumed run first cuts the rows written after that checkpoint.
    """

    def __init__(self, path: Path, *, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, allow_nan=True) + "\n")
            handle.flush()

    def sync(self) -> None:
        """Flushes the log to disk, so that the size a checkpoint records is durable before
        the checkpoint is (a power loss then cannot leave the log shorter than recorded)."""
        if self.enabled and self.path.exists():
            with open(self.path, "ab") as handle:
                os.fsync(handle.fileno())

    def size(self) -> int:
        """Current size in bytes (0 if absent)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> None:
        """Cuts the log back to ``size`` bytes (rows after the resumed checkpoint)."""
        if self.enabled and self.path.exists() and self.path.stat().st_size > size:
            with open(self.path, "r+b") as handle:
                handle.truncate(size)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a ``metrics.jsonl`` file (or of ``<run dir>/metrics.jsonl``).

    A torn last line (the process was killed while appending it; ``--resume`` cuts it)
    is left out; a bad line anywhere else is a ``json.JSONDecodeError``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    text = path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not text.endswith("\n"):
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
    return [json.loads(line) for line in lines]
