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
measured on the training images. Anything else is a one-line DataError.
"""

from __future__ import annotations

import zipfile
from functools import partial
from pathlib import Path

import numpy as np

from atzoo.data.bundle import DatasetBundle, ImageArrays, channel_stats
from atzoo.errors import DataError
from atzoo.registry import DATASETS

FULL_KEYS = ("x_train", "y_train", "x_test", "y_test")
TRAIN_ONLY_KEYS = ("image", "label")


def npz_dataset(path: str, root: str | None = None, download: bool = True) -> DatasetBundle:
    """Loads ``path`` (``root`` and ``download`` are accepted for a uniform builder signature)."""
    archive = _open(Path(path).expanduser())
    keys = set(archive.files)
    layout = _layout(path, keys)
    arrays = {key: _read(archive, key, path) for key in layout}
    if len(layout) == 2:
        x_train, y_train = arrays["image"], arrays["label"]
        x_test, y_test = None, None
    else:
        x_train, y_train, x_test, y_test = (arrays[k] for k in FULL_KEYS)
    classes = _read_classes(archive, path) if "classes" in keys else None
    names = ("image", "label") if x_test is None else ("x_train", "y_train")
    _check_images(x_train, names[0], path)
    _check_labels(y_train, x_train, names[1], path)
    if x_test is not None:
        _check_images(x_test, "x_test", path)
        _check_labels(y_test, x_test, "y_test", path)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DataError(f"{path}: x_test images are {x_test.shape[1:]} but x_train images are {x_train.shape[1:]}")
    num_classes = _num_classes(path, classes, [(names[1], y_train), ("y_test", y_test)])
    return _bundle(f"npz:{path}", x_train, y_train, x_test, y_test, num_classes, classes)


def _open(path: Path) -> np.lib.npyio.NpzFile:
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)  # never unpickle data from a file
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a readable .npz archive ({str(exc).splitlines()[0]})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not an .npz archive with {', '.join(FULL_KEYS)}")
    return archive


def _layout(path: str, keys: set[str]) -> tuple[str, ...]:
    """The key set in use; names the missing keys otherwise."""
    if keys & set(FULL_KEYS) or not keys & set(TRAIN_ONLY_KEYS):
        wanted = FULL_KEYS
    else:
        wanted = TRAIN_ONLY_KEYS
    missing = [k for k in wanted if k not in keys]
    if missing:
        found = ", ".join(sorted(keys)) or "nothing"
        raise DataError(
            f"{path} lacks {', '.join(missing)} (found: {found}); expected {', '.join(FULL_KEYS)}, "
            f"or {', '.join(TRAIN_ONLY_KEYS)} for training-only data"
        )
    return wanted


def _read(archive: np.lib.npyio.NpzFile, key: str, path: str) -> np.ndarray:
    try:
        return archive[key]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # object arrays need pickle
        raise DataError(f"{path}: cannot read '{key}' ({str(exc).splitlines()[0]})") from None


def _read_classes(archive: np.lib.npyio.NpzFile, path: str) -> list[str]:
    classes = _read(archive, "classes", path)
    if classes.ndim != 1 or classes.dtype.kind not in "US":
        raise DataError(f"{path}: 'classes' must be a 1-d array of names, got {classes.dtype} {classes.shape}")
    return [c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist()]


def _check_images(x: np.ndarray, key: str, path: str) -> None:
    if x.dtype != np.uint8:
        raise DataError(f"{path}: '{key}' must be uint8 images (0..255), got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[3] not in (1, 3):
        raise DataError(f"{path}: '{key}' must have shape (N, H, W, C) with C = 1 or 3, got {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{path}: '{key}' holds no images")


def _check_labels(y: np.ndarray, x: np.ndarray, key: str, path: str) -> None:
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: '{key}' must hold integer labels, got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise DataError(f"{path}: '{key}' has shape {y.shape} but there are {x.shape[0]} images; expected ({x.shape[0]},)")
    if y.min() < 0:
        raise DataError(f"{path}: '{key}' holds negative label {int(y.min())}; labels must be 0 .. num_classes - 1")


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
