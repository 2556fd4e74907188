"""Training and evaluation loaders: the same interface over in-memory and file-backed data.

In-memory data (:class:`~atzoo.data.bundle.ImageArrays`) is moved to the device once as
``uint8``; each batch is an index, a crop/flip gather and a conversion there, with no
DataLoader, no worker processes and no per-image Python. Large-image data (a
``torch.utils.data.Dataset`` of PIL images) goes through a ``DataLoader`` whose workers
apply torchvision transforms; a per-example seed from the epoch plan makes those
transforms as deterministic as the device-side path.

Both loaders yield ``(x, y)``: ``x`` ``float32`` NCHW in [0, 1] and ``y`` ``int64``, on the
device. See :mod:`atzoo.data.sampling` for order, sharding and resumption.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from atzoo.data.augment import augment_batch, to_unit_float
from atzoo.data.bundle import DatasetBundle, ImageArrays
from atzoo.data.sampling import EpochPlan, check_rank, make_plan, shard_range, usable_examples
from atzoo.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]
DeviceLike = torch.device | str


# --------------------------------------------------------------------------- training


class TrainLoader(ABC):
    """One process's training batches; order and augmentation are a function of (seed, epoch).

    Call :meth:`set_epoch` before iterating each epoch (as with ``DistributedSampler``).
    ``len(loader)`` is the number of batches this process yields per epoch, the same on
    every rank.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        *,
        device: DeviceLike,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        check_rank(rank, world_size)
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self._per_rank = usable_examples(num_examples, batch_size, world_size, drop_last) // world_size

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order and augmentation the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self._per_rank / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)

    def iter_from(self, batch_index: int) -> Iterator[Batch]:
        """Batches ``batch_index, batch_index + 1, ...`` of the current epoch.

        They are exactly the batches an uninterrupted iteration yields from that index on,
        which is what resuming from a mid-epoch checkpoint needs.
        """
        if not 0 <= batch_index <= len(self):
            raise ValueError(f"batch_index must be in [0, {len(self)}], got {batch_index}")
        return self._batches(self.plan(), batch_index)

    def epoch_indices(self) -> torch.Tensor:
        """Dataset indices this process visits in the current epoch, in order (CPU)."""
        return self.plan().indices

    @abstractmethod
    def plan(self) -> EpochPlan:
        """This rank's plan for the current epoch (indices and augmentation draws)."""

    @abstractmethod
    def _batches(self, plan: EpochPlan, start: int) -> Iterator[Batch]:
        """Batches ``start, start + 1, ...`` of ``plan`` (in memory or through a DataLoader)."""

    def _bounds(self, batch: int) -> tuple[int, int]:
        return batch * self.batch_size, min((batch + 1) * self.batch_size, self._per_rank)


class TensorTrainLoader(TrainLoader):
    """Device-side loader for :class:`ImageArrays`: gather, crop, flip and convert on the device."""

    def __init__(
        self,
        data: ImageArrays,
        batch_size: int,
        *,
        crop_padding: int | None,
        flip: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(len(data), batch_size, **kwargs)
        self.crop_padding = crop_padding
        self.flip = flip
        # Held on the device as uint8: 150 MB for the whole of CIFAR-10.
        self.x = data.x.to(self.device)
        self.y = data.y.to(self.device)

    def plan(self) -> EpochPlan:
        return make_plan(
            self.num_examples, seed=self.seed, epoch=self.epoch, rank=self.rank, world_size=self.world_size,
            batch_size=self.batch_size, drop_last=self.drop_last, crop_padding=self.crop_padding, flip=self.flip,
        )

    def _batches(self, plan: EpochPlan, start: int) -> Iterator[Batch]:
        plan = plan.to(self.device)  # one small transfer per epoch, not one per batch
        for batch in range(start, len(self)):
            part = plan.slice(*self._bounds(batch))
            x = augment_batch(self.x[part.indices], self.crop_padding or 0, part.offsets, part.flips)
            yield x, self.y[part.indices]


class DatasetTrainLoader(TrainLoader):
    """DataLoader-backed loader for large-image datasets (torchvision transforms in workers)."""

    def __init__(
        self,
        data: Dataset,
        batch_size: int,
        *,
        transform: Callable[[Any], torch.Tensor],
        augment: bool,
        num_workers: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(len(data), batch_size, **kwargs)
        self.dataset = SeededTransform(data, transform)
        self.augment = augment
        self.num_workers = num_workers

    def plan(self) -> EpochPlan:
        return make_plan(
            self.num_examples, seed=self.seed, epoch=self.epoch, rank=self.rank, world_size=self.world_size,
            batch_size=self.batch_size, drop_last=self.drop_last, sample_seeds=self.augment,
        )

    def _batches(self, plan: EpochPlan, start: int) -> Iterator[Batch]:
        keys = _keys(plan.indices, plan.sample_seeds)
        batches = [keys[slice(*self._bounds(b))] for b in range(start, len(self))]
        yield from _device_batches(self.dataset, batches, self.device, self.num_workers)


# --------------------------------------------------------------------------- evaluation


class EvalLoader(ABC):
    """This process's contiguous shard of a split, unaugmented, each example exactly once.

    Attributes:
        num_examples: examples this process yields (the shards of all ranks sum to the
            split size, or to ``limit``).
        start: index in the split of this process's first example.

    Ranks may differ by one example, and so by one batch: reduce totals across processes
    after the loop, not per batch.
    """

    def __init__(self, start: int, stop: int, batch_size: int, device: DeviceLike) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.start = start
        self.num_examples = stop - start
        self.batch_size = batch_size
        self.device = torch.device(device)

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    @abstractmethod
    def __iter__(self) -> Iterator[Batch]:
        """This rank's test batches, each example once."""


class TensorEvalLoader(EvalLoader):
    """Evaluation batches of :class:`ImageArrays`, converted to float on the device."""

    def __init__(self, data: ImageArrays, start: int, stop: int, batch_size: int, device: DeviceLike) -> None:
        super().__init__(start, stop, batch_size, device)
        self.x = data.x[start:stop].to(self.device)
        self.y = data.y[start:stop].to(self.device)

    def __iter__(self) -> Iterator[Batch]:
        for first in range(0, self.num_examples, self.batch_size):
            last = first + self.batch_size
            yield to_unit_float(self.x[first:last]), self.y[first:last]


class DatasetEvalLoader(EvalLoader):
    """Evaluation batches of a ``Dataset`` through DataLoader workers."""

    def __init__(
        self,
        data: Dataset,
        start: int,
        stop: int,
        batch_size: int,
        device: DeviceLike,
        *,
        transform: Callable[[Any], torch.Tensor],
        num_workers: int,
    ) -> None:
        super().__init__(start, stop, batch_size, device)
        self.dataset = SeededTransform(data, transform)
        self.num_workers = num_workers

    def __iter__(self) -> Iterator[Batch]:
        keys = _keys(torch.arange(self.start, self.start + self.num_examples), None)
        batches = [keys[i : i + self.batch_size] for i in range(0, len(keys), self.batch_size)]
        yield from _device_batches(self.dataset, batches, self.device, self.num_workers)


# --------------------------------------------------------------------------- DataLoader plumbing


class SeededTransform(Dataset):
    """Applies ``transform`` to ``(image, label)`` items under a per-example seed.

    Items are addressed by ``(index, seed)``. With a seed, the transform's random draws
    (torchvision transforms use the global torch RNG) run inside ``fork_rng`` seeded with
    it, so the result depends on neither the worker count nor the caller's RNG state, and
    the caller's RNG is left as it was.
    """

    def __init__(self, base: Dataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[torch.Tensor, int]:
        index, seed = key
        image, label = self.base[index]
        if seed is None:
            return self.transform(image), int(label)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), int(label)


def _keys(indices: torch.Tensor, seeds: torch.Tensor | None) -> list[tuple[int, int | None]]:
    seed_list = seeds.tolist() if seeds is not None else [None] * len(indices)
    return list(zip(indices.tolist(), seed_list))


def _device_batches(dataset: Dataset, batches: list[list[Any]], device: torch.device, num_workers: int) -> Iterator[Batch]:
    """Runs a DataLoader over explicit batches of keys and moves each batch to ``device``."""
    if not batches:
        return
    pin = device.type == "cuda"  # pinned host memory makes the copy asynchronous
    # A private generator: the DataLoader would otherwise draw its worker base seed from the
    # global RNG. The draws that matter are the per-example seeds in the batches.
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin, generator=generator)
    for x, y in loader:
        yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)


# --------------------------------------------------------------------------- factories


def make_eval_loader(
    bundle: DatasetBundle,
    batch_size: int,
    *,
    device: DeviceLike,
    rank: int = 0,
    world_size: int = 1,
    split: str = "test",
    limit: int | None = None,
    num_workers: int = 2,
) -> EvalLoader:
    """An unaugmented loader over the first ``limit`` examples of ``split``, sharded by rank.

    Every example is visited exactly once across ranks, in contiguous shards, with no
    padding duplicates; ``loader.num_examples`` is this rank's count.

    Raises:
        DataError: an unknown split, a split with no examples, or ``limit < 1``.
    """
    check_rank(rank, world_size)
    data = bundle.split(split)
    if len(data) == 0:
        raise DataError(
            f"dataset '{bundle.name}' has no {split} examples (an npz with image/label arrays holds training "
            "data only); use a dataset with a test split, e.g. an npz with x_test and y_test"
        )
    if limit is not None and limit < 1:
        raise DataError(f"the evaluation limit must be >= 1, got {limit}")
    start, stop = shard_range(min(len(data), limit or len(data)), rank, world_size)
    if isinstance(data, ImageArrays):
        return TensorEvalLoader(data, start, stop, batch_size, device)
    transform = bundle.eval_transform or default_to_tensor
    return DatasetEvalLoader(data, start, stop, batch_size, device, transform=transform, num_workers=num_workers)


def default_to_tensor(image: Any) -> torch.Tensor:
    """PIL image or ``uint8`` CHW tensor -> ``float32`` CHW tensor in [0, 1]."""
    if isinstance(image, torch.Tensor):
        return to_unit_float(image) if image.dtype == torch.uint8 else image.to(torch.float32)
    from torchvision.transforms.functional import pil_to_tensor

    return to_unit_float(pil_to_tensor(image))


__all__ = [
    "DatasetTrainLoader",
    "DatasetEvalLoader",
    "EvalLoader",
    "SeededTransform",
    "TensorEvalLoader",
    "TensorTrainLoader",
    "TrainLoader",
    "make_eval_loader",
]
