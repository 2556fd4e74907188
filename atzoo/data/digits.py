"""``digits``: the embedded default dataset, real handwriting that needs no download.

scikit-learn ships the UCI optical-recognition handwritten digits (Alpaydin and Kaynak,
1998) inside the package: 1,797 grayscale 8x8 images of the digits 0-9, pixel values
0..16. They are scaled to ``uint8`` 0..255 (``round(v * 255 / 16)``) so they travel the
same path as every other image dataset.

Split: the first 1,437 images train, the last 360 test (80/20 in file order, as
``train_test_split(..., test_size=0.2, shuffle=False)`` gives): fixed, with no seed and no
RNG, so every machine and every library version agrees on it. Both halves hold every
class (141-146 training and 33-37 test images per digit).

Augmentation: random crop with 1-pixel padding (the CIFAR 4 px at 32 px, scaled to 8 px)
and no flip, since a mirrored digit is a different symbol (or none).
"""

from __future__ import annotations

import numpy as np

from atzoo.data.bundle import DatasetBundle, ImageArrays, benchmark_threat, channel_stats
from atzoo.registry import DATASETS

NUM_TRAIN = 1437


def digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``uint8`` (N, 8, 8, 1) images and ``int64`` labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images[..., None], digits.target.astype(np.int64)


@DATASETS.register("digits")
# The demo's threat model: 8/255 is below half of one of the digits' 17 grey levels, too small
# to separate robust from non-robust training; 32/255 is about two grey levels (atzoo.commands.demo).
@benchmark_threat(linf=32 / 255, l2=0.5)
def digits(root: str | None = None, download: bool = True) -> DatasetBundle:
    """Handwritten digits from scikit-learn (embedded, offline): 1,437 / 360 8x8 grayscale images."""
    images, labels = digit_arrays()
    train = ImageArrays.from_nhwc(images[:NUM_TRAIN], labels[:NUM_TRAIN])
    test = ImageArrays.from_nhwc(images[NUM_TRAIN:], labels[NUM_TRAIN:])
    mean, std = channel_stats(train.x)
    return DatasetBundle(
        name="digits", num_classes=10, in_channels=1, image_size=8, classes=[str(d) for d in range(10)],
        mean=mean, std=std, train=train, test=test, crop_padding=1, flip=False,
    )
