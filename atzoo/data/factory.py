"""``create_dataset``: a registered name, ``npz:PATH``, or ``NAME=npz:PATH`` (an ``.npz`` file
standing in for the registered dataset NAME) -> :class:`DatasetBundle`."""

from __future__ import annotations

from dataclasses import replace

from atzoo.data.bundle import BENCHMARK_ATTR, DatasetBundle
from atzoo.errors import RegistryError
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
        name: a registered dataset (``atzoo list datasets``), ``npz:PATH``, or
            ``NAME=npz:PATH``: the file stands in for NAME (e.g. a CIFAR-10 subset for
            ``cifar10``), whose benchmark threat model it takes unless the file states its own.
        root: folder with downloaded data (else ``$ATZOO_DATA``, else
            ``~/.cache/atzoo/data``; see :mod:`atzoo.data.vision`).
        download: let torchvision fetch missing files.
        train_subset: keep the first N training examples (debugging, the demo).
        test_subset: keep the first N test examples.

    Raises:
        RegistryError: unknown name (the message suggests the closest one).
        DataError: files missing or malformed, or a subset size < 1.
    """
    stand_in, source = split_stand_in(name)
    builder = DATASETS.get(source)
    bundle = builder(root=root, download=download)
    if stand_in is not None:
        bundle = replace(bundle, name=name)
    declared = DATASETS.fact(stand_in or source, BENCHMARK_ATTR)
    if not bundle.benchmark_eps and declared:
        bundle = replace(bundle, benchmark_eps=dict(declared))
    return bundle.subset(train=train_subset, test=test_subset)


def declared_benchmark(name: str | None) -> dict[str, float]:
    """The benchmark radii (norm -> eps) the dataset ``name`` declares where it is
    registered; {} for an unknown name, ``npz:`` data (its file states them, read when it
    is loaded) or a dataset that declares none."""
    return dict(DATASETS.fact(name, BENCHMARK_ATTR) or {}) if name else {}


def split_stand_in(name: str) -> tuple[str | None, str]:
    """``"cifar10=npz:PATH"`` -> ``("cifar10", "npz:PATH")``; any other name -> ``(None, name)``.

    Raises:
        RegistryError: the part before ``=`` is not a registered dataset.
    """
    stand_in, sep, source = name.partition("=")
    if not sep or not source.startswith("npz:") or ":" in stand_in:
        return None, name
    if stand_in not in DATASETS:
        raise RegistryError(f"'{name}': {DATASETS.unknown_message(stand_in)} (NAME=npz:PATH: the file stands in for NAME)")
    return stand_in, source
