"""Chunked, sharded and resumable per-example evaluation.

An evaluation over ``n`` examples is cut into fixed-size chunks. Each chunk is a unit of
work with its own seed (the caller derives it from the chunk index), so the result of a
chunk does not depend on which process runs it or on how many processes there are: a
run on 8 GPUs gives exactly the flags of a run on one. Pending chunks are assigned to
processes in contiguous blocks; the per-example results are gathered with
``torch.distributed.all_gather_object`` (any backend, gloo on CPU).

Progress is recorded in a JSON state file, written atomically (temp file, fsync,
``os.replace``) after every chunk, so an interrupted run resumes where it stopped.
With several processes each one writes its own part file (``<stem>.rank<k>.json``);
the main process merges them into the state file at the end. A state whose
fingerprint (model, data, settings) differs from the current run is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from atzoo.files.common import atomic_write_json
from atzoo.errors import AtzooError
from atzoo.files.safe_read import read_json_file

STATE_FORMAT = "atzoo-chunk-state/1"

#: Per-example results of one chunk: name -> list of booleans (one per example).
ChunkResult = dict[str, list[bool]]


@dataclass(frozen=True)
class ProcessGroup:
    """Rank and size of the default process group (one process when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> "ProcessGroup":
        """The initialised default group (accelerate initialises it), else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (in rank order) on every process."""
        if self.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each chunk of ``range(n)``; the last may be shorter."""
    if chunk_size < 1:
        raise AtzooError(f"chunk size must be >= 1, got {chunk_size}")
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def assign_chunks(pending: list[int], rank: int, world_size: int) -> list[int]:
    """This process's contiguous block of the pending chunk indices (sizes differ by <= 1)."""
    per, extra = divmod(len(pending), world_size)
    start = rank * per + min(rank, extra)
    return pending[start:start + per + (1 if rank < extra else 0)]


# --------------------------------------------------------------------------- state file


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Writes JSON to ``path`` atomically (:func:`atzoo.files.common.atomic_write_json`), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, payload, indent=1)


def _part_path(state_path: Path, rank: int) -> Path:
    return state_path.with_name(f"{state_path.stem}.rank{rank}.json")


def _read_chunks(path: Path, fingerprint: str, bounds: list[tuple[int, int]]) -> dict[int, ChunkResult]:
    """Finished chunks recorded in ``path`` for this fingerprint ({} when absent/stale).

    A chunk counts only when it is one of ``bounds`` and holds, under every key, one
    boolean per example of that chunk: a damaged or edited file (binary, wrong types,
    chunks that do not cover the examples) is a cache miss, never an error or a result.
    """
    if not path.is_file():
        return {}
    try:
        payload = read_json_file(path, "AutoAttack state")
    except AtzooError:
        return {}  # a torn, binary or foreign file is a cache miss, not an error
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        return {}
    if payload.get("fingerprint") != fingerprint or not isinstance(payload.get("chunks"), dict):
        return {}
    chunks = {}
    for key, value in payload["chunks"].items():
        index = int(key) if isinstance(key, str) and key.isdigit() else -1
        if 0 <= index < len(bounds) and _valid_chunk(value, bounds[index]):
            chunks[index] = value
    keys = {tuple(sorted(v)) for v in chunks.values()}
    return chunks if len(keys) <= 1 else {}


def _valid_chunk(value: Any, bound: tuple[int, int]) -> bool:
    size = bound[1] - bound[0]
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, list) and len(v) == size
                    and all(isinstance(b, bool) for b in v) for k, v in value.items()))


def load_state(state_path: Path, fingerprint: str, bounds: list[tuple[int, int]]) -> dict[int, ChunkResult]:
    """Finished chunks from the state file and any part files left by a sharded run."""
    done = _read_chunks(state_path, fingerprint, bounds)
    for part in sorted(state_path.parent.glob(f"{state_path.stem}.rank*.json")):
        done.update(_read_chunks(part, fingerprint, bounds))
    return done


def save_state(path: Path, fingerprint: str, settings: dict[str, Any], n: int, chunk_size: int,
               chunks: dict[int, ChunkResult]) -> None:
    """Writes the finished chunks atomically."""
    write_json_atomic(path, {
        "format": STATE_FORMAT,
        "fingerprint": fingerprint,
        "settings": settings,
        "n": n,
        "chunk_size": chunk_size,
        "finished": sorted(chunks),
        "chunks": {str(k): chunks[k] for k in sorted(chunks)},
    })


# --------------------------------------------------------------------------- runner


@dataclass
class ShardedRun:
    """Runs ``work`` on every chunk of ``range(n)`` across processes; see the module doc.

    Attributes:
        n: number of examples.
        chunk_size: examples per chunk (fixed, independent of the number of processes).
        group: the process group (every process must call :meth:`run`).
        state_path: JSON state file for resuming (``None``: no state).
        fingerprint: identifies model, data and settings; a state with another is ignored.
        settings: human-readable settings stored in the state file.
    """

    n: int
    chunk_size: int
    group: ProcessGroup
    state_path: Path | None = None
    fingerprint: str = ""
    settings: dict[str, Any] | None = None

    def run(
        self,
        work: Callable[[int, int, int], ChunkResult],
        on_chunk_done: Callable[[int, ChunkResult], None] | None = None,
        on_plan: Callable[[list[int]], None] | None = None,
    ) -> dict[str, list[bool]]:
        """Computes (or restores) every chunk; returns the per-example lists for all ``n``.

        Args:
            work: ``work(chunk_index, start, stop)`` -> per-example results of the chunk.
            on_chunk_done: called after each chunk this process finished and saved.
            on_plan: called once with the chunk indices this process will compute.
        """
        bounds = chunk_bounds(self.n, self.chunk_size)
        done = self.group.broadcast(self._load())
        pending = [i for i in range(len(bounds)) if i not in done]
        mine = assign_chunks(pending, self.group.rank, self.group.world_size)
        if on_plan is not None:
            on_plan(mine)
        computed: dict[int, ChunkResult] = {}
        for index in mine:
            start, stop = bounds[index]
            computed[index] = work(index, start, stop)
            self._save_progress(done, computed)
            if on_chunk_done is not None:
                on_chunk_done(index, computed[index])
        for part in self.group.gather(computed):
            done.update(part)
        self._finish(done)
        return _concatenate(done, len(bounds))

    def _load(self) -> dict[int, ChunkResult]:
        if self.state_path is None or not self.group.is_main:
            return {}
        return load_state(self.state_path, self.fingerprint, chunk_bounds(self.n, self.chunk_size))

    def _save_progress(self, done: dict[int, ChunkResult], computed: dict[int, ChunkResult]) -> None:
        if self.state_path is None:
            return
        if self.group.world_size == 1:
            self._write(self.state_path, {**done, **computed})
        else:
            self._write(_part_path(self.state_path, self.group.rank), computed)

    def _finish(self, done: dict[int, ChunkResult]) -> None:
        """The main process writes the merged state and removes the part files.

        Every part file is complete at this point: each process wrote its last one before
        the gather. Parts left by an earlier run with more processes go too.
        """
        if self.state_path is None:
            return
        if self.group.is_main:
            self._write(self.state_path, done)
            for part in self.state_path.parent.glob(f"{self.state_path.stem}.rank*.json"):
                part.unlink(missing_ok=True)
        self.group.barrier()  # on return the merged state file exists for every process

    def _write(self, path: Path, chunks: dict[int, ChunkResult]) -> None:
        save_state(path, self.fingerprint, self.settings or {}, self.n, self.chunk_size, chunks)


def _concatenate(done: dict[int, ChunkResult], n_chunks: int) -> dict[str, list[bool]]:
    """Joins the chunks' lists in chunk order."""
    missing = [i for i in range(n_chunks) if i not in done]
    if missing:
        raise RuntimeError(f"chunks {missing} have no result after the gather")
    keys = list(done[0]) if n_chunks else []
    return {key: [v for i in range(n_chunks) for v in done[i][key]] for key in keys}
