"""``npz:PATH`` datasets: images and labels in a NumPy ``.npz`` archive, held in memory.

Two layouts are read:

* ``x_train``, ``y_train``, ``x_test``, ``y_test``: a full dataset (the CIFAR subsets in
  ``shared/data`` use it);
* ``image``, ``label``: the layout of the generated CIFAR data used to extend training
  sets in robust-training research. It holds **training data only**: the bundle's test
  split is empty and asking for an evaluation loader on it is a
  :class:`~atzoo.errors.DataError`. No test set is borrowed from elsewhere, so an
  accuracy is never reported against data the user did not name.

Images are ``uint8`` (N, H, W, C) with C = 1 or 3; labels are integers in
``0 .. num_classes - 1``. An optional ``classes`` array of names fixes ``num_classes``;
otherwise it is the largest label + 1. The augmentation is the CIFAR one scaled to the
image size (padding H/8, so 4 at 32 px) with flips for colour images only (grayscale
sets are mostly characters and digits, which a mirror changes). Mean and std are
measured on the training images. Anything else is a one-line DataError. Files are read
with :class:`atzoo.data.safe_npz.NpzReader`: shapes and dtypes are checked from the headers
before anything is allocated, labels above :data:`MAX_CLASSES` are refused.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from atzoo.data.bundle import DatasetBundle, ImageArrays, channel_stats
from atzoo.errors import DataError
from atzoo.registry import DATASETS
from atzoo.data.safe_npz import ArrayInfo, NpzReader, check_fits_in_memory

FULL_KEYS = ("x_train", "y_train", "x_test", "y_test")
TRAIN_ONLY_KEYS = ("image", "label")
#: Most classes a dataset may have (ImageNet-21k has 21,841); a larger label is a damaged
#: file, and would otherwise allocate a class table of that size.
MAX_CLASSES = 100_000


def npz_dataset(path: str, root: str | None = None, download: bool = True) -> DatasetBundle:
    """Loads ``path`` (``root`` and ``download`` are accepted for a uniform builder signature).

    Every dtype and shape is checked from the arrays' headers (and the memory they need
    against the machine's) before any array is read: see :mod:`atzoo.data.safe_npz`.
    """
    reader = NpzReader(Path(path).expanduser())
    try:
        return _load(reader, path)
    finally:
        reader.close()


def _load(reader: NpzReader, path: str) -> DatasetBundle:
    layout = _layout(path, reader.keys)
    infos = {key: reader.info(key) for key in layout}
    pairs = [("image", "label")] if len(layout) == 2 else [("x_train", "y_train"), ("x_test", "y_test")]
    for x_key, y_key in pairs:
        _check_images(infos[x_key], path)
        _check_labels(infos[y_key], infos[x_key], path)
    if len(pairs) == 2 and infos["x_test"].shape[1:] != infos["x_train"].shape[1:]:
        raise DataError(f"{path}: x_test images are {infos['x_test'].shape[1:]} but x_train images are "
                        f"{infos['x_train'].shape[1:]}")
    check_fits_in_memory(reader.path, list(infos.values()))
    classes = _read_classes(reader, path) if "classes" in reader.keys else None
    labels = {y_key: _read_labels(reader, y_key, path) for _, y_key in pairs}
    num_classes = _num_classes(path, classes, list(labels.items()))
    x_train, y_train = reader.read(pairs[0][0]), labels[pairs[0][1]]
    x_test, y_test = (reader.read("x_test"), labels["y_test"]) if len(pairs) == 2 else (None, None)
    bundle = _bundle(f"npz:{path}", x_train, y_train, x_test, y_test, num_classes, classes)
    bundle.benchmark_eps = _read_benchmark(reader, path)
    return bundle


#: Optional scalar keys of an ``.npz`` file stating its benchmark radius per norm.
BENCHMARK_KEYS: dict[str, str] = {"benchmark_eps_linf": "linf", "benchmark_eps_l2": "l2"}


def _read_benchmark(reader: NpzReader, path: str) -> dict[str, float]:
    """The benchmark threat model the file states (``benchmark_eps_linf``/``_l2`` scalars)."""
    stated: dict[str, float] = {}
    for key, norm in BENCHMARK_KEYS.items():
        if key not in reader.keys:
            continue
        info = reader.info(key)
        if info.shape not in ((), (1,)) or info.dtype.kind != "f":
            raise DataError(f"{path}: '{key}' must be one float (the radius in [0, 1]), got {info.dtype} {info.shape}")
        value = float(reader.read(key).reshape(-1)[0])
        if not 0 < value <= 1:
            raise DataError(f"{path}: '{key}' must be in (0, 1], got {value}")
        stated[norm] = value
    return stated


def _layout(path: str, keys: set[str]) -> tuple[str, ...]:
    """The key set in use; names the missing keys otherwise."""
    if keys & set(FULL_KEYS) or not keys & set(TRAIN_ONLY_KEYS):
        wanted = FULL_KEYS
    else:
        wanted = TRAIN_ONLY_KEYS
    missing = [k for k in wanted if k not in keys]
    if missing:
        found = ", ".join(sorted(keys)[:8]) or "nothing"
        raise DataError(
            f"{path} lacks {', '.join(missing)} (found: {found}); expected {', '.join(FULL_KEYS)}, "
            f"or {', '.join(TRAIN_ONLY_KEYS)} for training-only data"
        )
    return wanted


def _read_classes(reader: NpzReader, path: str) -> list[str]:
    info = reader.info("classes")
    if len(info.shape) != 1 or info.dtype.kind not in "US" or not 0 < info.shape[0] <= MAX_CLASSES:
        raise DataError(f"{path}: 'classes' must be a 1-d array of 1 to {MAX_CLASSES} names, "
                        f"got {info.dtype} {info.shape}")
    classes = reader.read("classes")
    return [c.decode(errors="replace") if isinstance(c, bytes) else str(c) for c in classes.tolist()]


def _check_images(info: ArrayInfo, path: str) -> None:
    key, shape = info.key, info.shape
    if info.dtype != np.uint8:
        raise DataError(f"{path}: '{key}' must be uint8 images (0..255), got dtype {info.dtype}")
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise DataError(f"{path}: '{key}' must have shape (N, H, W, C) with C = 1 or 3, got {shape}")
    if shape[0] == 0:
        raise DataError(f"{path}: '{key}' holds no images")


def _check_labels(info: ArrayInfo, images: ArrayInfo, path: str) -> None:
    key, n = info.key, images.shape[0]
    if not np.issubdtype(info.dtype, np.integer):
        raise DataError(f"{path}: '{key}' must hold integer labels, got dtype {info.dtype}")
    if info.shape != (n,):
        raise DataError(f"{path}: '{key}' has shape {info.shape} but there are {n} images; expected ({n},)")


def _read_labels(reader: NpzReader, key: str, path: str) -> np.ndarray:
    """The labels of ``key``, each in ``0 .. MAX_CLASSES - 1``."""
    y = reader.read(key)
    low, high = (int(y.min()), int(y.max())) if y.size else (0, 0)
    if low < 0:
        raise DataError(f"{path}: '{key}' holds negative label {low}; labels must be 0 .. num_classes - 1")
    if high >= MAX_CLASSES:
        raise DataError(f"{path}: '{key}' holds label {high}; atzoo supports at most {MAX_CLASSES} classes "
                        f"(labels 0 .. {MAX_CLASSES - 1})")
    return y


def _num_classes(path: str, classes: list[str] | None, labels: list[tuple[str, np.ndarray | None]]) -> int:
    present = [(key, y) for key, y in labels if y is not None]
    top_key, top = max(((key, int(y.max())) for key, y in present), key=lambda item: item[1])
    if classes is None:
        return top + 1
    if top >= len(classes):
        raise DataError(f"{path}: '{top_key}' holds label {top}, outside the {len(classes)} names in 'classes'")
    return len(classes)


def _bundle(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray | None,
            y_test: np.ndarray | None, num_classes: int, classes: list[str] | None) -> DatasetBundle:
    train = ImageArrays.from_nhwc(x_train, y_train)
    _, height, width, channels = x_train.shape
    test = ImageArrays.from_nhwc(x_test, y_test) if x_test is not None else ImageArrays.empty(channels, height, width)
    mean, std = channel_stats(train.x)
    return DatasetBundle(
        name=name, num_classes=num_classes, in_channels=channels, image_size=height,
        classes=classes or [str(i) for i in range(num_classes)], mean=mean, std=std, train=train, test=test,
        crop_padding=max(1, round(height / 8)), flip=channels == 3,
    )


def _resolve(rest: str) -> partial[DatasetBundle]:
    """``npz:PATH`` -> a builder with the same signature as the registered ones."""
    if not rest:
        raise DataError("'npz:' needs a path, e.g. npz:../shared/data/cifar10_subset.npz")
    return partial(npz_dataset, rest)


DATASETS.register_prefix(
    "npz", _resolve, help="npz:PATH, arrays x_train/y_train/x_test/y_test (uint8 NHWC) or image/label (train only)"
)
