"""Datasets, device-side augmentation and sharded loaders.

* :func:`create_dataset` builds a :class:`DatasetBundle` from a registered name
  (``digits``, ``cifar10``, ``cifar100``, ``svhn``, ``imagenette``) or ``npz:PATH``.
  Where downloaded files are looked for: :mod:`atzoo.data.vision`.
* :func:`make_train_loader` and :func:`make_eval_loader` give a :class:`TrainLoader` and
  an :class:`EvalLoader` over it, sharded by rank, yielding float batches in [0, 1] on
  the device.
* :func:`~atzoo.data.benchmark.loader_throughput` measures the loaders (``atzoo bench data``).
"""

from atzoo.data import digits, npz, vision  # noqa: F401  (registers the datasets)
from atzoo.data.bundle import DatasetBundle, ImageArrays
from atzoo.data.factory import create_dataset
from atzoo.data.loaders import EvalLoader, TrainLoader, make_eval_loader
from atzoo.data.train_factory import make_train_loader
from atzoo.data.vision import data_root

__all__ = [
    "DatasetBundle",
    "EvalLoader",
    "ImageArrays",
    "TrainLoader",
    "create_dataset",
    "data_root",
    "make_eval_loader",
    "make_train_loader",
]
