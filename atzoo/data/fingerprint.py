"""Dataset identity by content: a fingerprint of the arrays a run actually used.

A dataset's name is not its identity: ``npz:/a/cifar10_subset.npz`` and
``npz:/mnt/b/cifar10_subset.npz`` may be the same file reached by two paths (a symlinked
folder, another machine's mount), and ``cifar10`` with ``data.train_subset=5000`` is not
``cifar10``. So every run records, beside a readable name, a hash of what it trained and
was evaluated on:

* in-memory splits (:class:`~atzoo.data.bundle.ImageArrays`: CIFAR, SVHN, digits, npz):
  SHA-256 of the shapes and bytes of the images and labels, after any subset;
* file-backed splits (Imagenette): SHA-256 of the (folder/file name, label) list of the
  samples used, relative to the dataset folder, so the mount point does not matter.

The fingerprint of a dataset is the hash of its two split digests (and, for a run with
``data.extra``, of the extra set's digest: a header-and-sample hash, see
:mod:`atzoo.data.extra`; the identity then has an ``extra`` entry). Hashing CIFAR-10's
150 MB of training images takes a fraction of a second; for the registered torchvision
sets it is still computed once and cached in ``$ATZOO_CACHE/fingerprints.json`` (default
``~/.cache/atzoo``), keyed by the source files' paths, sizes and modification times and
the number of examples kept. ``npz:`` files are always hashed (they are small, and the
hash must be of the arrays actually used).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atzoo.files.cache import add_to_json_cache, read_json_cache
from atzoo.data.bundle import DatasetBundle, ImageArrays, Split
from atzoo.provenance import cache_dir

#: Length of the hex digests kept (64 bits of SHA-256: collisions are not a concern here).
DIGEST_CHARS = 16


def readable_name(name: str) -> str:
    """``npz:/long/path/cifar10_subset.npz`` -> ``npz:cifar10_subset.npz``; others unchanged."""
    if name.startswith("npz:"):
        return "npz:" + Path(name[4:]).name
    return name


def split_digest(split: Split) -> str:
    """Hash of one split's content (see the module docstring)."""
    h = hashlib.sha256()
    if isinstance(split, ImageArrays):
        for tensor in (split.x, split.y):
            array = np.ascontiguousarray(tensor.detach().cpu().numpy())
            h.update(f"{array.dtype.str}{array.shape}".encode())
            if array.size:  # an empty split (no test set) has no bytes; memoryview cannot cast it
                h.update(memoryview(array).cast("B"))
    else:
        h.update(json.dumps(_sample_list(split)).encode())
    return h.hexdigest()[:DIGEST_CHARS]


def _sample_list(split: Any) -> list[Any]:
    """(last two path parts, label) of each sample of a file-backed dataset, or its length."""
    indices = None
    if isinstance(split, torch.utils.data.Subset):
        indices, split = list(split.indices), split.dataset
    samples = getattr(split, "_samples", None) or getattr(split, "samples", None)
    if samples is None:
        return [type(split).__name__, len(split) if indices is None else len(indices)]
    chosen = samples if indices is None else [samples[i] for i in indices]
    return [["/".join(Path(str(path)).parts[-2:]), int(label)] for path, label in chosen]


def combine(train_digest: str, test_digest: str) -> str:
    """The dataset fingerprint from its two split digests."""
    return hashlib.sha256(f"train:{train_digest};test:{test_digest}".encode()).hexdigest()[:DIGEST_CHARS]


def dataset_identity(bundle: DatasetBundle, *, trained_on: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{name, source, fingerprint, train: {n, digest}, test: {n, digest}}`` of a bundle.

    Args:
        bundle: the data as loaded (subsets applied).
        trained_on: the identity recorded at training time (``model_meta.json``); its
            ``train`` part replaces the bundle's, because ``atzoo eval`` loads the training
            split without the run's ``data.train_subset``. Ignored when it is not a dict
            with a ``train`` digest.
    """
    test = {"n": len(bundle.test), "digest": cached_digest(bundle, "test")}
    recorded = (trained_on or {}).get("train") if isinstance(trained_on, dict) else None
    if isinstance(recorded, dict) and isinstance(recorded.get("digest"), str):
        train = {"n": recorded.get("n"), "digest": recorded["digest"]}
    else:
        train = {"n": len(bundle.train), "digest": cached_digest(bundle, "train")}
    identity = {
        "name": readable_name(bundle.name), "source": bundle.name,
        "fingerprint": combine(train["digest"], test["digest"]), "train": train, "test": test,
    }
    extra = getattr(bundle, "extra", None)
    recorded_extra = (trained_on or {}).get("extra") if isinstance(trained_on, dict) else None
    record = extra.record() if extra is not None else recorded_extra if isinstance(recorded_extra, dict) else None
    if record is not None and isinstance(record.get("digest"), str):
        identity["extra"] = record
        identity["fingerprint"] = combine_extra(identity["fingerprint"], record["digest"])
    return identity


def combine_extra(fingerprint: str, extra_digest: str) -> str:
    """The fingerprint of a training set extended by an extra set (``data.extra``)."""
    return hashlib.sha256(f"{fingerprint};extra:{extra_digest}".encode()).hexdigest()[:DIGEST_CHARS]


def cached_digest(bundle: DatasetBundle, split: str) -> str:
    """:func:`split_digest`, cached per process and, for sets read from files, on disk."""
    data = getattr(bundle, split)
    memo = getattr(data, "_atzoo_digest", None)
    if memo is not None:
        return memo
    key = _cache_key(bundle, split)
    digest = _read_cache().get(key) if key else None
    if digest is None:
        digest = split_digest(data)
        if key:
            _write_cache(key, digest)
    try:
        data._atzoo_digest = digest  # type: ignore[union-attr]
    except AttributeError:  # a dataset class with __slots__: no per-process memo
        pass
    return digest


def _cache_key(bundle: DatasetBundle, split: str) -> str | None:
    """Name, split, size and the source files' (path, size, mtime); None for npz/digits."""
    files = getattr(bundle, "source_files", ())
    if not files:
        return None
    stats = []
    for file in files:
        try:
            st = Path(file).stat()
        except OSError:
            return None
        stats.append(f"{Path(file).resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return f"{bundle.name}|{split}|{len(getattr(bundle, split))}|" + "|".join(stats)


def _cache_file() -> Path:
    return cache_dir() / "fingerprints.json"


def _read_cache() -> dict[str, Any]:
    return read_json_cache(_cache_file(), "fingerprint cache")


def _write_cache(key: str, value: str) -> None:
    add_to_json_cache(_cache_file(), "fingerprint cache", key, value)
