"""Atomic, verified, code-free checkpoints.

A checkpoint is a directory ``checkpoints/step-<global step>/`` holding:

* ``<name>.safetensors`` -- tensor state (model, method modules, weight average, RNG);
* ``<name>.pt`` -- objects that need a pickle (the optimizer and scheduler state);
  written with :func:`torch.save`, read back only with ``torch.load(weights_only=True)``,
  which refuses anything but tensors and plain containers, so loading never runs code;
* ``state.json`` -- counters and the non-tensor leaves of the method and RNG state;
* ``MANIFEST.json`` -- the size and SHA-256 of every other file, written last.

Writing is atomic: the files go into a hidden temporary directory, each is fsync'ed,
the manifest is written, and the directory is renamed into place (then the parent is
fsync'ed). A crash at any moment leaves either the complete new checkpoint or none, and
the previous checkpoints untouched; only then are checkpoints beyond the newest ``keep``
removed. Reading verifies the manifest first, so a truncated or corrupted file is a
:class:`~atzoo.errors.CheckpointError` naming that file, and :func:`find_resume_checkpoint`
falls back to the newest checkpoint that verifies.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

from atzoo.files.common import TMP_PREFIX as _TMP_PREFIX
from atzoo.files.common import atomic_write_bytes, atomic_write_json, atomic_write_text, fsync_dir  # noqa: F401 (re-exported)
from atzoo.errors import CheckpointError
from atzoo.files.safe_read import read_json_file, safe_torch_load

FORMAT = "atzoo-checkpoint-1"
MANIFEST = "MANIFEST.json"
STATE = "state.json"
_NAME = re.compile(r"^step-(\d+)$")
_TENSOR_REF = "__tensor__"
_TUPLE = "__tuple__"
_INT_KEYS = "__int_keys__"

#: Crash-test hook. With ``ATZOO_TEST_CRASH_AT=<phase>:<global step>`` in the environment
#: the process kills itself (SIGKILL: no clean-up, like ``kill -9`` or a lost node) at that
#: point, so tests/test_fault_tolerance.py can crash a run exactly there and resume it.
#: Phases: ``step`` (after that optimizer step, logged but not checkpointed),
#: ``checkpoint-write`` (the checkpoint's files are in its temporary directory, the manifest
#: and the rename are not done), ``checkpoint-done`` (the checkpoint is in place and pruned).
#: ``<phase>:<step>:SIGINT`` (or another signal name) sends that signal instead, as a
#: Ctrl-C would. Unset, it does nothing.
CRASH_ENV = "ATZOO_TEST_CRASH_AT"


def crash_point(phase: str, global_step: int) -> None:
    """Signals the process when :data:`CRASH_ENV` names this phase and step (tests only)."""
    parts = os.environ.get(CRASH_ENV, "").split(":")
    if parts[:2] != [phase, str(global_step)]:
        return
    kill = getattr(signal, "SIGKILL", signal.SIGTERM)
    chosen = getattr(signal, parts[2], None) if len(parts) > 2 else kill
    if isinstance(chosen, signal.Signals):
        os.kill(os.getpid(), chosen)


# --------------------------------------------------------------------------- atomic files


def write_synced(path: Path, data: bytes) -> str:
    """Writes ``data`` to ``path``, fsyncs it, and returns its SHA-256 hex digest."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- tensor trees


def split_tensors(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Replaces every tensor in a nested dict/list by a reference, collecting the tensors.

    The result is JSON-serialisable; ``tensors`` maps ``prefix/path`` to each tensor.
    Tuples, and dicts with integer keys (an optimizer's ``state_dict``), are marked so
    that :func:`join_tensors` gives them back as they were.

    Raises:
        TypeError: a leaf is neither a tensor nor a JSON scalar (a bug in the caller).
    """
    if isinstance(obj, Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR_REF: prefix}
    if isinstance(obj, dict):
        if obj and all(isinstance(k, int) and not isinstance(k, bool) for k in obj):  # e.g. optimizer state
            return {_INT_KEYS: {str(k): split_tensors(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}}
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"state keys must be strings (or all integers) at {prefix!r}")
        return {k: split_tensors(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [split_tensors(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def join_tensors(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR_REF}:
            return tensors[obj[_TENSOR_REF]]
        if set(obj) == {_TUPLE}:
            return tuple(join_tensors(v, tensors) for v in obj[_TUPLE])
        if set(obj) == {_INT_KEYS}:
            return {int(k): join_tensors(v, tensors) for k, v in obj[_INT_KEYS].items()}
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def plain_state_dict(module: torch.nn.Module) -> dict[str, Tensor]:
    """A module's state dict as detached, contiguous CPU copies (safetensors needs them)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def all_finite(tensors: dict[str, Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN/inf, or None if all are finite."""
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


# --------------------------------------------------------------------------- checkpoint data


@dataclass
class CheckpointData:
    """What one checkpoint holds.

    Attributes:
        tensors: file stem -> flat tensor dict, stored as ``<stem>.safetensors``.
        pickled: file stem -> object of tensors and plain containers, ``<stem>.pt``.
        state: JSON-serialisable counters and metadata, ``state.json``.
    """

    tensors: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    pickled: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(global_step: int) -> str:
    """Directory name of the checkpoint after ``global_step`` optimizer steps."""
    return f"step-{global_step:09d}"


def checkpoint_step(path: Path) -> int | None:
    """The global step encoded in a checkpoint directory name (None if not one)."""
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories under ``root``, oldest first (by global step)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def _serialise(data: CheckpointData) -> dict[str, bytes]:
    """File name -> bytes for every file of a checkpoint except the manifest."""
    files: dict[str, bytes] = {}
    for stem, tensors in data.tensors.items():
        files[f"{stem}.safetensors"] = safetensors_save(tensors, metadata={"format": FORMAT})
    for stem, obj in data.pickled.items():
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        files[f"{stem}.pt"] = buffer.getvalue()
    files[STATE] = (json.dumps(data.state, indent=1) + "\n").encode("utf-8")
    return files


def save_checkpoint(root: str | Path, global_step: int, data: CheckpointData, *, keep: int) -> Path:
    """Writes ``data`` atomically as ``root/step-<global_step>`` and keeps the newest ``keep``.

    Raises:
        CheckpointError: a tensor to be saved holds NaN or inf (a checkpoint with
            non-finite weights is never written).
    """
    for stem, tensors in data.tensors.items():
        bad = all_finite(tensors)
        if bad is not None:
            raise CheckpointError(f"refusing to write a checkpoint: {stem} tensor '{bad}' is not finite")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    final = root / checkpoint_name(global_step)
    tmp = root / f"{_TMP_PREFIX}{final.name}.{os.getpid()}"
    try:
        tmp.mkdir()
        _write_files(tmp, data, global_step)
        _move_into_place(tmp, final)
    except OSError as exc:  # disk full, quota, permissions: the earlier checkpoints are intact
        raise CheckpointError(
            f"cannot write checkpoint {final}: {exc.strerror or exc}; the earlier checkpoints are intact "
            "(free space, then continue with --resume)"
        ) from None
    finally:  # also on Ctrl-C: no half-written checkpoint is left behind
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(root)
    prune_checkpoints(root, keep)
    crash_point("checkpoint-done", global_step)
    return final


def _write_files(tmp: Path, data: CheckpointData, global_step: int) -> None:
    """Every file of the checkpoint into ``tmp``, each fsync'ed, the manifest last."""
    manifest = {"format": FORMAT, "files": {}}
    for name, blob in _serialise(data).items():
        manifest["files"][name] = {"sha256": write_synced(tmp / name, blob), "bytes": len(blob)}
    crash_point("checkpoint-write", global_step)
    write_synced(tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    fsync_dir(tmp)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Renames ``tmp`` to ``final``; an existing ``final`` (e.g. a corrupted one being
    re-written after a fallback) is moved aside first and deleted afterwards."""
    trash = None
    if final.exists():
        trash = final.with_name(f"{_TMP_PREFIX}old-{final.name}.{os.getpid()}")
        os.replace(final, trash)
    os.replace(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def remove_stale_temporaries(root: Path) -> None:
    """Deletes half-written checkpoints left by a crash (hidden ``.tmp-*`` entries)."""
    for entry in root.iterdir():
        if entry.name.startswith(_TMP_PREFIX):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def prune_checkpoints(root: Path, keep: int) -> list[Path]:
    """Deletes all but the newest ``keep`` checkpoints; returns the deleted paths."""
    doomed = list_checkpoints(root)[:-keep] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# --------------------------------------------------------------------------- reading


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The ``files`` table of a checkpoint's manifest.

    Raises:
        CheckpointError: the manifest is missing or malformed.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {MANIFEST} is missing")
    try:
        manifest = read_json_file(manifest_path, "checkpoint manifest", error=CheckpointError)
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError("unknown format")
        for name, entry in files.items():
            if "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"bad file name {name!r}")
            if not isinstance(entry.get("bytes"), int) or not isinstance(entry.get("sha256"), str):
                raise ValueError(f"bad entry for {name!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint manifest {manifest_path} is corrupted ({exc})") from None
    return files


def verify_checkpoint(path: str | Path) -> dict[str, dict[str, Any]]:
    """Checks every file of a checkpoint against its manifest (size, then SHA-256).

    Returns:
        The manifest's file table.

    Raises:
        CheckpointError: naming the first missing, truncated or corrupted file.
    """
    path = Path(path)
    files = read_manifest(path)
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"checkpoint file {file} is truncated or altered ({size} of {entry['bytes']} bytes)")
        if sha256_file(file) != entry["sha256"]:
            raise CheckpointError(f"checkpoint file {file} is corrupted (SHA-256 mismatch)")
    return files


def load_safetensors_file(file: Path) -> dict[str, Tensor]:
    """Reads a safetensors file onto the CPU; a malformed file is a CheckpointError."""
    try:
        return safetensors_load(file.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file {file} cannot be read as safetensors ({exc})") from None


def load_pickle_safely(file: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code.

    Raises:
        CheckpointError: the file is not a torch pickle, or it asks to build objects
            that the safe unpickler does not allow (which is how a planted payload shows).
    """
    return safe_torch_load(file, "checkpoint file")


def load_checkpoint(path: str | Path) -> CheckpointData:
    """Verifies and reads a checkpoint directory written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: naming the file that is missing, truncated, corrupted or unsafe.
    """
    path = Path(path)
    files = verify_checkpoint(path)
    data = CheckpointData()
    for name in files:
        file = path / name
        if name.endswith(".safetensors"):
            data.tensors[name[: -len(".safetensors")]] = load_safetensors_file(file)
        elif name.endswith(".pt"):
            data.pickled[name[: -len(".pt")]] = load_pickle_safely(file)
        elif name == STATE:
            try:
                data.state = json.loads(file.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"checkpoint file {file} is not valid JSON ({exc})") from None
    if STATE not in files:
        raise CheckpointError(f"checkpoint {path} has no {STATE}")
    return data


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from and the newer ones that failed verification."""

    path: Path
    data: CheckpointData
    skipped: list[str] = field(default_factory=list)


def find_resume_checkpoint(root: str | Path) -> ResumePoint | None:
    """The newest checkpoint under ``root`` that verifies and loads.

    Returns:
        None when ``root`` holds no checkpoint at all.

    Raises:
        CheckpointError: checkpoints exist but none of them is usable; the message
            names the newest one's problem.
    """
    skipped: list[str] = []
    candidates = list_checkpoints(root)
    for path in reversed(candidates):
        try:
            return ResumePoint(path=path, data=load_checkpoint(path), skipped=skipped)
        except CheckpointError as exc:
            skipped.append(str(exc))
    if candidates:
        raise CheckpointError(f"no usable checkpoint in {root}: {skipped[0]}")
    return None
