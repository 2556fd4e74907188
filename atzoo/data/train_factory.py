"""The training-loader factory: picks the loader for a dataset bundle.

It sits above :mod:`atzoo.data.loaders` (in-memory and file-backed loaders) and
:mod:`atzoo.data.mixing` (original data mixed with a memory-mapped extra set), which
builds on the loaders' base classes, so neither of them imports the other's dependants.
"""

from __future__ import annotations

from atzoo.data.bundle import DatasetBundle, ImageArrays
from atzoo.data.loaders import DatasetTrainLoader, DeviceLike, TensorTrainLoader, TrainLoader, default_to_tensor
from atzoo.data.mixing import MixedTrainLoader
from atzoo.errors import DataError


def make_train_loader(
    bundle: DatasetBundle,
    batch_size: int,
    *,
    device: DeviceLike,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    augment: bool = True,
    drop_last: bool = True,
    num_workers: int = 2,
    extra_fraction: float = 0.7,
) -> TrainLoader:
    """The training loader for ``bundle``: device-side for in-memory data.

    Args:
        bundle: the dataset.
        batch_size: per-process batch size.
        device: where batches are produced (``accelerator.device``).
        seed: with the epoch, determines order and augmentation.
        rank, world_size: this process and the number of processes; each rank gets a
            disjoint shard of every epoch.
        augment: the bundle's augmentation (``crop_padding``, ``flip``) or none.
        drop_last: keep only whole global batches (see
            :func:`~atzoo.data.sampling.usable_examples`).
        num_workers: DataLoader workers for datasets that are not in memory.
        extra_fraction: with ``bundle.extra`` (``data.extra``), the share of every batch
            drawn from it (:mod:`atzoo.data.mixing`); ignored without extra data.

    Raises:
        DataError: the training set is smaller than one global batch; extra data with a
            training set that is not held in memory.
    """
    common = dict(device=device, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last)
    train = bundle.train
    if bundle.extra is not None:
        if not isinstance(train, ImageArrays):
            raise DataError(f"data.extra needs a training set held in memory (CIFAR, SVHN, npz:); "
                            f"'{bundle.name}' is read from image files")
        padding = bundle.crop_padding if augment and bundle.crop_padding > 0 else None
        loader: TrainLoader = MixedTrainLoader(train, bundle.extra, batch_size, fraction=extra_fraction,
                                               crop_padding=padding, flip=augment and bundle.flip, **common)
    elif isinstance(train, ImageArrays):
        padding = bundle.crop_padding if augment and bundle.crop_padding > 0 else None
        loader = TensorTrainLoader(train, batch_size, crop_padding=padding, flip=augment and bundle.flip, **common)
    else:
        transform = (bundle.train_transform if augment else bundle.eval_transform) or default_to_tensor
        loader = DatasetTrainLoader(train, batch_size, transform=transform, augment=augment,
                                    num_workers=num_workers, **common)
    if len(loader) == 0:
        raise DataError(
            f"the training set of '{bundle.name}' has {len(train)} examples, fewer than one global batch "
            f"({batch_size} per process x {world_size} processes); lower data.batch_size"
        )
    return loader


__all__ = ["make_train_loader"]
