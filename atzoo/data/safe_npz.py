"""The one bounded ``.npz`` reader: headers are checked before any array is allocated.

An ``.npz`` archive is a zip of ``.npy`` files, each a small text header (dtype, shape)
followed by the raw data. :class:`NpzReader` reads only the headers first, so that a
dataset can be validated (dtypes, shapes, the memory it needs) before a byte of data is
read; each header must also agree with the size the zip directory records for its
member, so a header that claims a terabyte array in a 1 KB file is refused without
trying to allocate it. Object arrays (which need pickle, i.e. running code from the
file) are refused from the header; data is read with ``allow_pickle=False`` anyway.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from atzoo.errors import DataError

#: Largest ``.npy`` header read (numpy's own default bound).
MAX_HEADER_BYTES = 10_000


@dataclass(frozen=True)
class ArrayInfo:
    """What an ``.npy`` header declares."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def memory_bytes() -> int | None:
    """Physical memory of this machine, where the OS reports it."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


class NpzReader:
    """Reads headers and arrays of an ``.npz`` archive without trusting its headers.

    Raises (every method):
        DataError: one line naming the file, the key and the problem.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"npz file not found: {self.path}")
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            raise DataError(f"{self.path} is not a readable .npz archive ({_first(exc)})") from None
        self.members = {info.filename[: -len(".npy")]: info for info in self.zip.infolist()
                        if info.filename.endswith(".npy")}
        if not self.members:
            raise DataError(f"{self.path} is not an .npz archive of arrays (no .npy member)")

    @property
    def keys(self) -> set[str]:
        return set(self.members)

    def info(self, key: str) -> ArrayInfo:
        """The declared dtype and shape of ``key``, checked against the member's size."""
        with self._open(key) as handle:
            return self._header(key, handle)[0]

    def read(self, key: str) -> np.ndarray:
        """The array ``key`` (its header checked first; never unpickled)."""
        with self._open(key) as handle:
            info, _ = self._header(key, handle)
            try:
                array = self._read_data(handle, info)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"{self.path}: cannot read '{key}' ({_first(exc)})") from None
        return array

    def close(self) -> None:
        self.zip.close()

    # ------------------------------------------------------------------ internals
    def _open(self, key: str):  # noqa: ANN202 - a zipfile.ZipExtFile
        if key not in self.members:
            raise DataError(f"{self.path} has no array '{key}'")
        try:
            return self.zip.open(self.members[key])
        except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
            raise DataError(f"{self.path}: cannot open '{key}' ({_first(exc)})") from None

    def _header(self, key: str, handle) -> tuple[ArrayInfo, int]:  # noqa: ANN001
        try:
            version = npy_format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(handle, max_header_size=MAX_HEADER_BYTES)
            else:
                shape, fortran, dtype = npy_format.read_array_header_2_0(handle, max_header_size=MAX_HEADER_BYTES)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{self.path}: '{key}' is not a valid .npy array ({_first(exc)})") from None
        if dtype.hasobject:
            raise DataError(f"{self.path}: '{key}' holds Python objects, which would need pickle; atzoo reads only "
                            "plain numeric arrays")
        if fortran:
            raise DataError(f"{self.path}: '{key}' is stored in Fortran order; save it C-contiguous")
        info = ArrayInfo(key, tuple(int(n) for n in shape), dtype)
        header_bytes = handle.tell()
        declared = self.members[key].file_size - header_bytes
        if info.nbytes != declared:
            raise DataError(f"{self.path}: '{key}' declares shape {info.shape} of {dtype} ({info.nbytes} bytes) "
                            f"but holds {max(declared, 0)} bytes of data; the file is damaged")
        return info, header_bytes

    @staticmethod
    def _read_data(handle, info: ArrayInfo) -> np.ndarray:  # noqa: ANN001
        """Reads the data straight into the array (one allocation of the checked size)."""
        array = np.empty(info.shape, dtype=info.dtype)
        view, done = memoryview(array.reshape(-1).view(np.uint8)), 0
        while done < info.nbytes:
            got = handle.readinto(view[done:])
            if not got:
                raise EOFError(f"the data ends after {done} of {info.nbytes} bytes")
            done += got
        return array


def check_fits_in_memory(path: Path, infos: list[ArrayInfo]) -> None:
    """Refuses a dataset whose declared arrays exceed this machine's physical memory."""
    total, memory = sum(i.nbytes for i in infos), memory_bytes()
    if memory is not None and total > memory:
        raise DataError(f"{path} declares {total / 2**30:.1f} GiB of arrays, more than this machine's "
                        f"{memory / 2**30:.1f} GiB of memory")


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
