"""``create_dataset``: a registered name (or ``npz:PATH``) -> :class:`DatasetBundle`."""

from __future__ import annotations

from dataclasses import replace

from atzoo.data.bundle import BENCHMARK_ATTR, DatasetBundle
from atzoo.registry import DATASETS


def create_dataset(
    name: str,
    *,
    root: str | None = None,
    download: bool = True,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> DatasetBundle:
    """Builds a dataset by name, like timm's ``create_model``.

    Args:
        name: a registered dataset (``atzoo list datasets``) or ``npz:PATH``.
        root: folder with downloaded data (else ``$ATZOO_DATA``, else
            ``~/.cache/atzoo/data``; see :mod:`atzoo.data.vision`).
        download: let torchvision fetch missing files.
        train_subset: keep the first N training examples (debugging, the demo).
        test_subset: keep the first N test examples.

    Raises:
        RegistryError: unknown name (the message suggests the closest one).
        DataError: files missing or malformed, or a subset size < 1.
    """
    builder = DATASETS.get(name)
    bundle = builder(root=root, download=download)
    declared = DATASETS.fact(name, BENCHMARK_ATTR)
    if not bundle.benchmark_eps and declared:
        bundle = replace(bundle, benchmark_eps=dict(declared))
    return bundle.subset(train=train_subset, test=test_subset)


def declared_benchmark(name: str | None) -> dict[str, float]:
    """The benchmark radii (norm -> eps) the dataset ``name`` declares where it is
    registered; {} for an unknown name, ``npz:`` data (its file states them, read when it
    is loaded) or a dataset that declares none."""
    return dict(DATASETS.fact(name, BENCHMARK_ATTR) or {}) if name else {}
