"""torchvision datasets: CIFAR-10, CIFAR-100, SVHN (in memory) and Imagenette (160 px, from files).

Where the files live (first that applies):

1. the ``root`` argument (``data.root`` in a recipe, ``--data-root`` on the command line);
2. the environment variable ``ATZOO_DATA``;
3. ``~/.cache/atzoo/data``.

The layout inside the folder is torchvision's own, so a folder that torchvision already
filled works as it is:

* ``cifar10``: ``cifar-10-batches-py/`` (``data_batch_1`` ... ``data_batch_5``,
  ``test_batch``, ``batches.meta``), from ``cifar-10-python.tar.gz``;
* ``cifar100``: ``cifar-100-python/`` (``train``, ``test``, ``meta``), from
  ``cifar-100-python.tar.gz``;
* ``svhn``: ``train_32x32.mat`` and ``test_32x32.mat`` directly in the folder;
* ``imagenette``: ``imagenette2-160/train/`` and ``imagenette2-160/val/``, from
  ``imagenette2-160.tgz``.

With ``download=True`` torchvision fetches missing files; without a network, or with
``download=False``, missing files are a one-line :class:`~atzoo.errors.DataError` that
names the files and the folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atzoo.data.bundle import DatasetBundle, ImageArrays, benchmark_threat
from atzoo.errors import DataError
from atzoo.registry import DATASETS, declare

# Per-channel statistics of the full training sets (only used when a model normalises).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

IMAGENETTE_SIZE = 160  # the release: images whose shorter side is 160 px
IMAGENETTE_CROP = 128  # the official AR-AT code's training and test crops


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder datasets are read from and downloaded to (see the module docstring)."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("ATZOO_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "atzoo" / "data"


def _missing(folder: Path, files: list[str]) -> list[str]:
    return [name for name in files if not (folder / name).exists()]


def _fetch(
    name: str,
    folder: Path,
    files: list[str],
    source: str,
    download: bool,
    build: Callable[[bool], Any],
) -> Any:
    """Runs ``build(download)`` once the files are there, or raises a one-line DataError.

    Args:
        name: dataset name for messages.
        folder: the data root.
        files: paths (relative to ``folder``) that must exist.
        source: where the user can get the files by hand ("extracted from URL").
        build: constructs the torchvision dataset(s), downloading when told to.
    """
    missing = _missing(folder, files)
    where = f"put {', '.join(missing or files)} in {folder} ({source})"
    if missing and not download:
        raise DataError(f"{name} files not found and download is off: {where}, or set data.download=true")
    try:
        if missing:
            folder.mkdir(parents=True, exist_ok=True)
        return build(bool(missing))
    except OSError as exc:  # no network (URLError is an OSError), disk full, permissions
        action = "download" if missing else "read"
        raise DataError(f"could not {action} {name} ({_reason(exc)}): {where}") from None
    except RuntimeError as exc:  # torchvision's "not found or corrupted" (bad checksum)
        raise DataError(f"{name} files in {folder} are incomplete or corrupted ({exc}); {where}") from None


def _reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
    return str(reason).splitlines()[0] if str(reason) else type(exc).__name__


# --------------------------------------------------------------------------- CIFAR / SVHN


def _cifar(name: str, cls_name: str, folder_name: str, files: list[str], archive: str,
           mean: tuple[float, ...], std: tuple[float, ...], root: str | None, download: bool) -> DatasetBundle:
    folder = data_root(root)

    def build(fetch: bool) -> tuple[Any, Any]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        return cls(str(folder), train=True, download=fetch), cls(str(folder), train=False, download=False)

    train, test = _fetch(name, folder, [f"{folder_name}/{f}" for f in files], archive, download, build)
    return DatasetBundle(
        name=name, num_classes=len(train.classes), in_channels=3, image_size=32, classes=list(train.classes),
        mean=mean, std=std,
        train=ImageArrays.from_nhwc(train.data, np.asarray(train.targets)),
        test=ImageArrays.from_nhwc(test.data, np.asarray(test.targets)),
        crop_padding=4, flip=True, source_files=tuple(str(folder / folder_name / f) for f in files),
    )


@DATASETS.register("cifar10")
@declare(train_size=50_000, image_size=32)
# RobustBench and the AR-AT paper (Table 3, Table 14 L2) evaluate every method at these radii.
@benchmark_threat(linf=8 / 255, l2=0.5)
def cifar10(root: str | None = None, download: bool = True) -> DatasetBundle:
    """CIFAR-10 (torchvision): 50,000 / 10,000 32x32 colour images, 10 classes."""
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    return _cifar("cifar10", "CIFAR10", "cifar-10-batches-py", files,
                  "extracted from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", CIFAR10_MEAN, CIFAR10_STD,
                  root, download)


@DATASETS.register("cifar100")
@declare(train_size=50_000, image_size=32)
# RobustBench's CIFAR-100 leaderboard and the AR-AT paper (Table 3): L-inf 8/255; L2 as CIFAR-10.
@benchmark_threat(linf=8 / 255, l2=0.5)
def cifar100(root: str | None = None, download: bool = True) -> DatasetBundle:
    """CIFAR-100 (torchvision): 50,000 / 10,000 32x32 colour images, 100 fine classes."""
    return _cifar("cifar100", "CIFAR100", "cifar-100-python", ["train", "test", "meta"],
                  "extracted from https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", CIFAR100_MEAN, CIFAR100_STD,
                  root, download)


@DATASETS.register("svhn")
@declare(train_size=73_257, image_size=32)
# The L-inf radius adversarial-training papers evaluate SVHN at (as CIFAR); L2 as CIFAR.
@benchmark_threat(linf=8 / 255, l2=0.5)
def svhn(root: str | None = None, download: bool = True) -> DatasetBundle:
    """SVHN (torchvision): 73,257 / 26,032 32x32 house-number digits, 10 classes; no flip."""
    folder = data_root(root)

    def build(fetch: bool) -> tuple[Any, Any]:
        from torchvision.datasets import SVHN

        return (SVHN(str(folder), split="train", download=fetch and not (folder / "train_32x32.mat").exists()),
                SVHN(str(folder), split="test", download=fetch and not (folder / "test_32x32.mat").exists()))

    files = ["train_32x32.mat", "test_32x32.mat"]
    train, test = _fetch("svhn", folder, files, "from http://ufldl.stanford.edu/housenumbers/", download, build)
    # torchvision already maps the digit-0 label 10 to 0 and stores (N, 3, 32, 32).
    arrays = [ImageArrays(torch.from_numpy(np.ascontiguousarray(ds.data)), torch.from_numpy(ds.labels.astype(np.int64)))
              for ds in (train, test)]
    return DatasetBundle(
        name="svhn", num_classes=10, in_channels=3, image_size=32, classes=[str(d) for d in range(10)],
        mean=SVHN_MEAN, std=SVHN_STD, train=arrays[0], test=arrays[1],
        crop_padding=4, flip=False,  # a mirrored digit is not the same digit
        source_files=tuple(str(folder / f) for f in files),
    )


# --------------------------------------------------------------------------- Imagenette


def imagenette_transforms(
    size: int = IMAGENETTE_CROP,
) -> tuple[Callable[[Any], torch.Tensor], Callable[[Any], torch.Tensor]]:
    """Training (``RandomCrop(128, padding=4)`` + flip) and evaluation (``CenterCrop(128)``)
    transforms of ``imagenette2-160``, as the official AR-AT code sets Imagenette up (the
    setting of the paper's Table 4); outputs are float in [0, 1] (no normalisation: that is
    the model's first layer when enabled).
    """
    from torchvision import transforms as T

    train = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    test = T.Compose([T.CenterCrop(size), T.ToTensor()])
    return train, test


@DATASETS.register("imagenette")
@declare(train_size=9_469, image_size=IMAGENETTE_CROP)
# The AR-AT paper's Table 4 evaluates every method on Imagenette at L-inf 8/255 (AutoAttack).
@benchmark_threat(linf=8 / 255)
def imagenette(root: str | None = None, download: bool = True) -> DatasetBundle:
    """Imagenette 160 px (torchvision): 9,469 / 3,925 ImageNet images of 10 classes, from files,
    cropped to 128 px (:func:`imagenette_transforms`)."""
    folder = data_root(root)

    def build(fetch: bool) -> tuple[Any, Any]:
        from torchvision.datasets import Imagenette

        return (Imagenette(str(folder), split="train", size="160px", download=fetch),
                Imagenette(str(folder), split="val", size="160px", download=False))

    train, test = _fetch("imagenette", folder, ["imagenette2-160/train", "imagenette2-160/val"],
                         "extracted from https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz", download, build)
    train_tf, eval_tf = imagenette_transforms()
    return DatasetBundle(
        name="imagenette", num_classes=10, in_channels=3, image_size=IMAGENETTE_CROP,
        classes=[names[0] for names in train.classes], mean=IMAGENET_MEAN, std=IMAGENET_STD,
        train=train, test=test, crop_padding=0, flip=True, train_transform=train_tf, eval_transform=eval_tf,
    )
