"""The dataset containers every loader reads: :class:`ImageArrays` and :class:`DatasetBundle`.

Small datasets (CIFAR, SVHN, the digits, npz files) are held whole in memory as
:class:`ImageArrays`: a ``uint8`` NCHW image tensor and ``int64`` labels. That is what lets
the training loader put the whole set on the accelerator once and augment whole batches
there. Large-image datasets (Imagenette) stay a ``torch.utils.data.Dataset`` of PIL images
and are decoded and transformed by DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from atzoo.errors import DataError


@dataclass
class ImageArrays:
    """Images and labels held in memory.

    Attributes:
        x: ``uint8`` tensor of shape (N, C, H, W).
        y: ``int64`` tensor of shape (N,).
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"ImageArrays.x must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
            raise ValueError(f"ImageArrays.y must be int64 ({self.x.shape[0]},), got {self.y.dtype} {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def head(self, n: int | None) -> "ImageArrays":
        """The first ``n`` examples (all of them when ``n`` is None or larger than the set)."""
        return self if n is None or n >= len(self) else ImageArrays(self.x[:n], self.y[:n])

    @classmethod
    def from_nhwc(cls, images: np.ndarray, labels: np.ndarray) -> "ImageArrays":
        """Builds from numpy ``uint8`` (N, H, W, C) images and integer labels."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        return cls(x, torch.from_numpy(np.asarray(labels).astype(np.int64)))

    @classmethod
    def empty(cls, channels: int, height: int, width: int) -> "ImageArrays":
        """A split with no examples (an npz that ships training data only)."""
        return cls(torch.zeros(0, channels, height, width, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))


Split = ImageArrays | Dataset


@dataclass
class DatasetBundle:
    """One dataset as the engine and the evaluator see it.

    ``crop_padding`` and ``flip`` are the augmentation the papers use for this data (random
    crop after zero padding, random horizontal flip). ``train_transform`` and
    ``eval_transform`` are only used when a split is a ``Dataset`` rather than
    :class:`ImageArrays`: they map one PIL image to a float tensor in [0, 1].
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    test: Split
    crop_padding: int = 4
    flip: bool = True
    train_transform: Callable[[Any], torch.Tensor] | None = field(default=None, repr=False)
    eval_transform: Callable[[Any], torch.Tensor] | None = field(default=None, repr=False)
    #: Files the splits were read from (registered sets): keys the fingerprint cache.
    source_files: tuple[str, ...] = field(default=(), repr=False)
    #: Extra training images read from disk (``data.extra``), mixed into every training
    #: batch; an :class:`atzoo.data.extra.ExtraSet` or None. Not part of ``train``.
    extra: Any = field(default=None, repr=False)
    #: The dataset's benchmark threat model: radius per norm that every method is evaluated
    #: at by default (declared with :func:`benchmark_threat` where the dataset is
    #: registered, or stored in an ``.npz`` file); empty when the data states none.
    benchmark_eps: dict[str, float] = field(default_factory=dict)

    @property
    def in_memory(self) -> bool:
        """True when both splits are :class:`ImageArrays` (device-side loading)."""
        return isinstance(self.train, ImageArrays) and isinstance(self.test, ImageArrays)

    def split(self, name: str) -> Split:
        """``"train"`` or ``"test"``; anything else is a :class:`DataError`."""
        if name not in ("train", "test"):
            raise DataError(f"unknown split '{name}'. Valid choices: train, test")
        return self.train if name == "train" else self.test

    def subset(self, train: int | None = None, test: int | None = None) -> "DatasetBundle":
        """A copy keeping the first ``train`` training and ``test`` test examples."""
        return replace(self, train=head(self.train, train, "train_subset"), test=head(self.test, test, "test_subset"))


#: The registry fact (:func:`atzoo.registry.declare`) holding a dataset's benchmark radii.
BENCHMARK_ATTR = "benchmark_eps"


def benchmark_threat(**eps_by_norm: float) -> Callable[[Any], Any]:
    """Declares, on a dataset builder, the threat model every method is evaluated at by
    default on that data (``linf=8/255, l2=0.5``), whatever eps a method trained with.

    Stack it under ``@DATASETS.register(...)``; :func:`atzoo.data.create_dataset` copies it
    into the bundle; :meth:`atzoo.config.threat.ThreatModel.resolve` reads it by dataset name
    (``DATASETS.fact(name, "benchmark_eps")``).
    """
    for norm, eps in eps_by_norm.items():
        if norm not in ("linf", "l2") or not 0 < eps <= 1:
            raise ValueError(f"benchmark threat model needs linf/l2 radii in (0, 1], got {norm}={eps}")

    from atzoo.registry import declare

    return declare(**{BENCHMARK_ATTR: dict(eps_by_norm)})


def head(split: Split, n: int | None, what: str = "subset") -> Split:
    """The first ``n`` examples of ``split`` (``None`` keeps all)."""
    if n is None:
        return split
    if n < 1:
        raise DataError(f"{what} must be >= 1, got {n}")
    if isinstance(split, ImageArrays):
        return split.head(n)
    return split if n >= len(split) else Subset(split, range(n))


def channel_stats(x: torch.Tensor, max_images: int = 10_000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of a ``uint8`` NCHW tensor.

    Only the first ``max_images`` images are read: the statistics settle long before that,
    and a million-image generated set would otherwise cost seconds for nothing.
    """
    if x.shape[0] == 0:
        return tuple([0.5] * x.shape[1]), tuple([0.25] * x.shape[1])
    sample = x[:max_images].to(torch.float64).div_(255)
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)  # a constant channel must not divide by 0
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
