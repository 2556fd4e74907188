"""Extra training data read from disk by rows: generated or pseudo-labelled images at scale.

The strongest CIFAR models train on millions of extra images mixed into every batch:
500K pseudo-labelled 80M-Tiny-Images pictures (Carmon et al., "Unlabeled Data Improves
Adversarial Robustness", NeurIPS 2019), or images from a generative model (Gowal et al.,
"Improving Robustness using Generated Data", NeurIPS 2021; Wang et al., "Better Diffusion
Models Further Improve Adversarial Training", ICML 2023, up to 50M images). At 3 KB a
CIFAR image, 20M images are 60 GB, so an :class:`ExtraSet` never loads the images: it
validates the headers, then reads the rows a batch needs with positional reads
(``os.pread``) from the uncompressed arrays. The process holds one batch; the kernel's page
cache (shared, reclaimable, outside the process's own memory) caches what is read often.

Accepted layouts (``data.extra=SPEC``):

* ``npz:FILE.npz`` -- an **uncompressed** archive (``np.savez``) with ``image`` (uint8
  N x H x W x C) and ``label`` (integers, N): the layout of the files released with Wang et
  al. 2023 (github.com/wzekai99/DM-Improves-AT, ``1m.npz`` ... ``20m_part1.npz``) and by
  Rebuffi/Gowal. A zip member stored without compression is the ``.npy`` file verbatim,
  so its rows are read at their offset inside the archive. ``np.savez_compressed``
  members cannot be read in place and are refused with the way out.
* ``npy:FOLDER`` (or ``npz:FOLDER``) -- a folder with ``image.npy`` and ``label.npy``, or
  shards ``image_<k>.npy`` + ``label_<k>.npy`` (any suffix ``<k>``; shards are taken in
  sorted suffix order, so the global row ``i`` is fixed by the files alone).

Every header is checked before anything is read (:mod:`atzoo.data.safe_npz`): dtypes, shapes,
that each file holds exactly the declared bytes, image size and channels equal to the
original training set's, labels in ``0 .. num_classes - 1`` (read once in chunks of
:data:`LABEL_CHUNK`, so a 20M-label file costs 160 MB of reading, never of memory).

Identity: :meth:`ExtraSet.digest` is SHA-256 over the header facts (image dtype, the global
shape rows x H x W x C; not how the rows are split into files, nor the labels' integer type) and a fixed sample of :data:`FINGERPRINT_ROWS` rows (images and
labels) at evenly spaced indices ``round(k * (N - 1) / (K - 1))``. It costs K row reads
however large the set is; a change to rows outside the sample is not seen, a change of
size, shape, dtype or of any sampled row is.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atzoo.errors import DataError
from atzoo.data.safe_npz import ArrayInfo, NpzReader, npy_file_layout

#: Rows hashed for the fingerprint of an extra set (evenly spaced, first and last included).
FINGERPRINT_ROWS = 1024
#: Labels read at a time when checking their range.
LABEL_CHUNK = 1 << 20
#: Digest length, as for the other dataset digests.
DIGEST_CHARS = 16

_SHARD = re.compile(r"^(image|label)_(.+)\.npy$")


@dataclass(frozen=True)
class StoredArray:
    """One ``.npy`` array inside a file: where its rows start, what they are."""

    path: Path
    offset: int
    info: ArrayInfo

    @property
    def rows(self) -> int:
        return self.info.shape[0]

    @property
    def row_bytes(self) -> int:
        return self.info.nbytes // max(self.rows, 1)


class ExtraSet:
    """Images and labels stored on disk, read by rows (see the module docstring).

    Args:
        spec: what the user wrote (``npz:PATH`` / ``npy:FOLDER``), kept for the record.
        images, labels: the stored arrays, in global row order (shards concatenated).
    """

    def __init__(self, spec: str, images: list[StoredArray], labels: list[StoredArray]) -> None:
        self.spec = spec
        self.images = images
        self.labels = labels
        counts = [a.rows for a in images]
        self.starts = np.cumsum([0, *counts])  # global row of each shard's first row
        self.image_shape = images[0].info.shape[1:]  # (H, W, C)
        self._files: dict[tuple[int, Path], int] = {}  # (pid, path) -> descriptor
        self._lock = threading.Lock()
        self._digest: str | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    # ------------------------------------------------------------------ reading rows
    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``indices`` as ``uint8`` (B, H, W, C) images and ``int64`` (B,) labels."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"extra rows must be in [0, {len(self)}), got {indices.min()} .. {indices.max()}")
        images = self._read_rows(self.images, indices).view(np.uint8).reshape(len(indices), *self.image_shape)
        labels = self._read_rows(self.labels, indices).view(self.labels[0].info.dtype).reshape(-1).astype(np.int64)
        return images, labels

    def _read_rows(self, arrays: list[StoredArray], indices: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self.starts, indices, side="right") - 1
        row_bytes = arrays[0].row_bytes
        out = np.empty((len(indices), row_bytes), dtype=np.uint8)
        for k, (s, i) in enumerate(zip(shard.tolist(), indices.tolist())):
            array = arrays[s]
            position = array.offset + (i - int(self.starts[s])) * row_bytes
            data = os.pread(self._fd(array.path), row_bytes, position)
            if len(data) != row_bytes:
                raise DataError(f"{array.path}: short read at row {i} (the file changed after it was checked)")
            out[k] = np.frombuffer(data, dtype=np.uint8)
        return out

    def _fd(self, path: Path) -> int:
        """A read-only descriptor per process (a forked worker opens its own)."""
        key = (os.getpid(), path)
        fd = self._files.get(key)
        if fd is None:
            with self._lock:
                fd = self._files.get(key)
                if fd is None:
                    fd = self._files[key] = os.open(path, os.O_RDONLY)
        return fd

    def close(self) -> None:
        """Closes this process's descriptors."""
        for (pid, _), fd in list(self._files.items()):
            if pid == os.getpid():
                os.close(fd)
        self._files.clear()

    def __getstate__(self) -> dict[str, Any]:  # descriptors do not travel to other processes
        state = dict(self.__dict__)
        state["_files"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ identity
    def digest(self) -> str:
        """SHA-256 (first 16 hex digits) of the layout and a fixed row sample."""
        if self._digest is None:
            h = hashlib.sha256()
            # The content, not the storage: one .npz and the same rows in shards hash alike.
            # Labels are hashed as the int64 values training sees, whatever integer type stores them.
            shape = (len(self), *self.image_shape)
            h.update(f"{self.images[0].info.dtype.str}{shape};labels int64;sample={FINGERPRINT_ROWS}".encode())
            images, labels = self.gather(fingerprint_rows(len(self)))
            h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
            h.update(memoryview(np.ascontiguousarray(labels)).cast("B"))
            self._digest = h.hexdigest()[:DIGEST_CHARS]
        return self._digest

    def record(self) -> dict[str, Any]:
        """``{source, n, digest, digest_rows, files}``: what a run records about the set."""
        return {"source": readable_spec(self.spec), "n": len(self), "digest": self.digest(),
                "digest_rows": min(FINGERPRINT_ROWS, len(self)), "files": len(self.images)}


def fingerprint_rows(n: int, k: int = FINGERPRINT_ROWS) -> np.ndarray:
    """``k`` evenly spaced rows of ``0 .. n - 1`` (all rows when ``n <= k``)."""
    if n <= k:
        return np.arange(n, dtype=np.int64)
    return np.round(np.linspace(0, n - 1, k)).astype(np.int64)


def readable_spec(spec: str) -> str:
    """``npz:/long/path/1m.npz`` -> ``npz:1m.npz`` (as for dataset names)."""
    kind, _, path = spec.partition(":")
    return f"{kind}:{Path(path).name}" if path else spec


# --------------------------------------------------------------------------- opening


def open_extra(spec: str, *, image_shape: tuple[int, int, int], num_classes: int) -> ExtraSet:
    """Opens and validates ``data.extra``.

    Args:
        spec: ``npz:FILE.npz``, ``npz:FOLDER`` or ``npy:FOLDER``.
        image_shape: ``(H, W, C)`` of the original training images; the extra images must match.
        num_classes: labels must be in ``0 .. num_classes - 1``.

    Raises:
        DataError: one line naming the file and the problem.
    """
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("npz", "npy") or not rest:
        raise DataError(f"data.extra must be npz:FILE.npz (uncompressed, arrays image and label) or npy:FOLDER "
                        f"(image.npy + label.npy, or image_<k>.npy + label_<k>.npy shards), got '{spec}'")
    path = Path(rest).expanduser()
    if path.is_dir():
        images, labels = _folder_arrays(path)
    elif kind == "npz" and path.is_file():
        images, labels = _archive_arrays(path)
    else:
        raise DataError(f"data.extra: {path} is not {'a folder' if kind == 'npy' else 'an .npz file or a folder'}")
    for image, label in zip(images, labels):
        _check_pair(image, label, image_shape)
    extra = ExtraSet(spec, images, labels)
    _check_label_range(extra, num_classes)
    return extra


def _archive_arrays(path: Path) -> tuple[list[StoredArray], list[StoredArray]]:
    reader = NpzReader(path)
    try:
        missing = [k for k in ("image", "label") if k not in reader.keys]
        if missing:
            raise DataError(f"{path} lacks {', '.join(missing)} (found: {', '.join(sorted(reader.keys)) or 'nothing'});"
                            " extra data needs arrays image (uint8 N x H x W x C) and label (N integers)")
        (image, image_at), (label, label_at) = reader.stored_layout("image"), reader.stored_layout("label")
    finally:
        reader.close()
    return [StoredArray(path, image_at, image)], [StoredArray(path, label_at, label)]


def _folder_arrays(folder: Path) -> tuple[list[StoredArray], list[StoredArray]]:
    if (folder / "image.npy").is_file() or (folder / "label.npy").is_file():
        pairs = [("", folder / "image.npy", folder / "label.npy")]
    else:
        shards: dict[str, dict[str, Path]] = {}
        for file in folder.iterdir():
            match = _SHARD.match(file.name)
            if match:
                shards.setdefault(match.group(2), {})[match.group(1)] = file
        if not shards:
            raise DataError(f"{folder} holds neither image.npy + label.npy nor image_<k>.npy + label_<k>.npy shards")
        pairs = [(k, v.get("image", folder / f"image_{k}.npy"), v.get("label", folder / f"label_{k}.npy"))
                 for k, v in sorted(shards.items())]
    images, labels = [], []
    for _, image_file, label_file in pairs:
        for file in (image_file, label_file):
            if not file.is_file():
                raise DataError(f"{folder}: {file.name} is missing (images and labels come in pairs)")
        images.append(StoredArray(image_file, *_swap(npy_file_layout(image_file))))
        labels.append(StoredArray(label_file, *_swap(npy_file_layout(label_file))))
    return images, labels


def _swap(layout: tuple[ArrayInfo, int]) -> tuple[int, ArrayInfo]:
    return layout[1], layout[0]


def _check_pair(image: StoredArray, label: StoredArray, image_shape: tuple[int, int, int]) -> None:
    shape = image.info.shape
    if image.info.dtype != np.uint8:
        raise DataError(f"data.extra {image.path}: images must be uint8 (0..255), got {image.info.dtype}")
    if len(shape) != 4 or tuple(shape[1:]) != tuple(image_shape):
        raise DataError(f"data.extra {image.path}: images must be (N, {', '.join(map(str, image_shape))}) like the "
                        f"training set, got {shape}")
    if shape[0] == 0:
        raise DataError(f"data.extra {image.path}: holds no images")
    if not np.issubdtype(label.info.dtype, np.integer) or label.info.shape != (shape[0],):
        raise DataError(f"data.extra {label.path}: labels must be {shape[0]} integers (one per image), got "
                        f"{label.info.dtype} {label.info.shape}")


def _check_label_range(extra: ExtraSet, num_classes: int) -> None:
    """Reads the labels once, in bounded chunks, and checks ``0 <= label < num_classes``."""
    for array in extra.labels:
        dtype, count = array.info.dtype, array.rows
        with open(array.path, "rb") as handle:
            handle.seek(array.offset)
            done = 0
            while done < count:
                chunk = np.fromfile(handle, dtype=dtype, count=min(LABEL_CHUNK, count - done))
                if chunk.size == 0:
                    raise DataError(f"data.extra {array.path}: the labels end after {done} of {count}")
                low, high = int(chunk.min()), int(chunk.max())
                if low < 0 or high >= num_classes:
                    bad = low if low < 0 else high
                    raise DataError(f"data.extra {array.path}: label {bad} is outside 0 .. {num_classes - 1} "
                                    "(the training set's classes)")
                done += chunk.size


def attach_extra(bundle: Any, spec: str) -> Any:
    """``bundle`` with ``data.extra`` opened and validated against its training images."""
    from dataclasses import replace

    shape = (bundle.image_size, bundle.image_size, bundle.in_channels)
    train = bundle.train
    if hasattr(train, "x"):  # ImageArrays: the exact (H, W) of the images
        shape = (int(train.x.shape[2]), int(train.x.shape[3]), int(train.x.shape[1]))
    return replace(bundle, extra=open_extra(spec, image_shape=shape, num_classes=bundle.num_classes))
