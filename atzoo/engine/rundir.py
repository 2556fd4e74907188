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
``--resume`` (continue it) is given, and only when it is an atzoo run; that is decided by
:func:`check_run_dir` before anything is written, and again by :class:`RunDirClaim` after
the directory exists and is locked (``.atzoo.lock``, see :mod:`atzoo.engine.lock`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
from pathlib import Path
from typing import Any

from atzoo.config import RunConfig
from atzoo.engine.lock import LOCK_FILE, RunLock
from atzoo.errors import AtzooError, ConfigError, RunDirError, brief
from atzoo.files.paths import check_output_path

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
    valid = "valid: {method}, {model}, {dataset}, {seed}"
    shown = brief(template)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"run.name {shown} is not a valid name template ({exc}); {valid}") from None
    pieces = []
    for literal, field, spec, conversion in parts:
        if field is not None and (field not in fields or spec or conversion):
            raise ConfigError(f"run.name {shown} has an unknown placeholder {brief('{' + field + '}')}; {valid}")
        pieces.append(literal + (str(fields[field]) if field is not None else ""))
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", "".join(pieces))
    if name in ("", ".", "..") or len(name) > 200:
        raise ConfigError(f"run.name {shown} must name one folder (1-200 characters, not '.' or '..'); "
                          "use --out for any other place")
    return name


def resolve_run_dir(cfg: RunConfig, out: str | Path | None = None) -> Path:
    """``out``, else ``run.out``, else ``runs/<run.name or the default name>``.

    A path with ``..`` in it is replaced by the absolute folder it names
    (``--out nothere/..`` is the current folder, which must then pass every check).
    """
    if out is not None:
        path = Path(out)
    elif cfg.run.out:
        path = Path(cfg.run.out)
    else:
        path = Path("runs") / (format_run_name(cfg.run.name, cfg) if cfg.run.name else default_run_name(cfg))
    return Path(os.path.realpath(path)) if ".." in path.parts else path


#: Entries atzoo itself keeps in or next to a run directory while it runs.
_OWN_ENTRIES = (LOCK_FILE,)


def entries(path: Path) -> list[str]:
    """Names in directory ``path`` other than atzoo's lock file ([] when absent)."""
    if not path.is_dir():
        return []
    return [p.name for p in path.iterdir() if p.name not in _OWN_ENTRIES]


def is_nonempty_dir(path: Path) -> bool:
    return bool(entries(path))


def _contains_cwd(path: Path) -> bool:
    cwd = Path.cwd().resolve()
    return path == cwd or path in cwd.parents


def check_run_dir(path: Path, *, force: bool, resume: bool) -> None:
    """The one decision whether ``path`` may be written, taken before anything is written
    (and repeated by :class:`RunDirClaim` after the directory exists).

    Decisions are on the resolved path (symbolic links and ``..`` followed), so no
    spelling of a folder escapes them.

    Raises:
        RunDirError: ``--force`` with ``--resume``; another atzoo process holds the
            directory; ``path`` is a file; it is a non-empty directory and neither flag
            is given; ``--force``/``--resume`` on a non-empty directory that is not an
            atzoo run; ``--force`` on the current folder or one above it; or the location
            cannot be written.
    """
    if force and resume:
        raise RunDirError("--force and --resume cannot be combined: --force starts over, --resume continues")
    real = Path(os.path.realpath(path))
    if real.exists() and not real.is_dir():
        raise RunDirError(f"run directory {path} exists and is a file")
    shown = f"{path}" if str(real) in (str(path), os.path.abspath(path)) else f"{path} (= {real})"
    holder = RunLock(real).live_holder() if real.is_dir() else None
    if holder is not None:
        raise RunDirError(f"run directory {shown} is in use by {holder.describe()}; wait for it to finish")
    if is_nonempty_dir(real):
        if not (force or resume):
            raise RunDirError(f"run directory {shown} already exists; use --resume to continue it or --force to replace it")
        if not looks_like_run(real):
            flag = "--force only replaces" if force else "--resume only continues"
            raise RunDirError(f"{flag} atzoo run directories, and {shown} holds other files")
        if force and _contains_cwd(real):
            raise RunDirError(f"--force would replace {shown}, which holds the current folder; run from elsewhere")
    try:  # root may write anywhere, but never below a file
        check_output_path(path, "the run directory", directory=True)
    except AtzooError as exc:
        raise RunDirError(str(exc)) from None


class RunDirClaim:
    """Holds a run directory for one run: created, checked again, locked; on failure undone.

    :meth:`acquire` (after every check that needs no writing) re-runs
    :func:`check_run_dir` on the resolved path, moves an old run aside for ``--force``
    (``.<name>.replaced-<pid>`` next to it, same file system: a rename), creates the
    directory, checks that it still resolves to the same place, locks it, and checks it
    once more under the lock. :meth:`started` (the first optimizer step succeeded)
    deletes the old run for good. Leaving the ``with`` block by an exception before that
    undoes everything: the new directory (if this run created it) is removed and the old
    run renamed back. The lock is released on every exit.

    Args:
        enabled: False on processes other than the main one (they write nothing).
    """

    def __init__(self, path: Path, *, force: bool, resume: bool, enabled: bool = True) -> None:
        self.path, self.force, self.resume, self.enabled = path, force, resume, enabled
        self.real = Path(os.path.realpath(path))
        self.lock = RunLock(self.real)
        self.aside: Path | None = None
        self.created: list[Path] = []
        self.is_started = False

    def __enter__(self) -> "RunDirClaim":
        return self

    def acquire(self) -> None:
        """Creates, re-checks and locks the directory (see the class doc)."""
        if not self.enabled:
            return
        check_run_dir(self.path, force=self.force, resume=self.resume)
        if self.force and is_nonempty_dir(self.real):
            self._move_old_run_aside()
        self._create()
        if Path(os.path.realpath(self.path)) != self.real:
            raise RunDirError(f"run directory {self.path} changed while it was being created; run again")
        self.lock.acquire()
        if not self.resume and is_nonempty_dir(self.real):
            raise RunDirError(f"run directory {self.path} was written by another process while this run started")
        if self.resume and is_nonempty_dir(self.real) and not looks_like_run(self.real):
            raise RunDirError(f"--resume only continues atzoo run directories, and {self.path} holds other files")

    def _move_old_run_aside(self) -> None:
        holder = RunLock(self.real).live_holder()  # read-only: the old run stays byte for byte
        if holder is not None:
            raise RunDirError(f"run directory {self.path} is in use by {holder.describe()}; wait for it to finish")
        aside = self.real.with_name(f".{self.real.name}.replaced-{os.getpid()}")
        try:
            os.rename(self.real, aside)
        except OSError as exc:
            raise RunDirError(f"cannot move the old run {self.path} aside: {exc.strerror or exc}") from None
        self.aside = aside

    def _create(self) -> None:
        missing = [p for p in (self.real, *self.real.parents) if not p.exists()]
        try:
            self.real.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot write the run directory {self.path}: {exc.strerror or exc}") from None
        self.created = sorted(missing, key=lambda p: len(p.parts))  # outermost first

    def started(self) -> None:
        """The new run is under way: the old run (``--force``) is deleted for good."""
        if self.is_started or not self.enabled:
            return
        self.is_started = True
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.enabled:
            return
        try:
            if exc_type is None:
                self.started()
            elif not self.is_started:
                self._undo()
        finally:
            self.lock.release()

    def _undo(self) -> None:
        """Back to the state before :meth:`acquire`: what this run created is removed (only
        while it holds the lock: a folder another process took is never touched), the old
        run renamed back."""
        if self.resume:
            return  # a resume never removes anything; its checkpoints stay
        if self.lock.held:
            if self.real in self.created or self.aside is not None:
                shutil.rmtree(self.real, ignore_errors=True)
            else:  # a folder that existed empty: empty it again
                for name in entries(self.real):
                    target = self.real / name
                    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
            self.lock.release()
            for folder in reversed([p for p in self.created if p != self.real]):
                try:
                    folder.rmdir()  # only if still empty: another run may have arrived in it
                except OSError:
                    break
        if self.aside is not None:
            try:
                if self.real.exists():
                    raise FileExistsError(f"{self.path} exists again")
                os.rename(self.aside, self.real)
            except OSError as exc:
                raise RunDirError(f"the old run could not be moved back from {self.aside} to {self.path} "
                                  f"({exc.strerror or exc}); move it back by hand") from None
            self.aside = None


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
