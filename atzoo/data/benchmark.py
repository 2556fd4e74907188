"""Loader throughput: the device-side loader against the usual torchvision ``DataLoader``.

The baseline is what the papers' training scripts do: a ``Dataset`` of PIL images with
``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()`` + ``ToTensor()``, batched by a
``DataLoader`` and copied to the device. Both sides produce the same thing (augmented
``float32`` batches in [0, 1] on the device) over the same training images.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from atzoo.data.bundle import DatasetBundle, ImageArrays
from atzoo.data.factory import create_dataset
from atzoo.data.train_factory import make_train_loader
from atzoo.errors import DataError


class PILImages(Dataset):
    """An :class:`ImageArrays` split as a torchvision-style dataset of ``(PIL image, label)``."""

    def __init__(self, data: ImageArrays, transform: Any) -> None:
        self.images = data.x.permute(0, 2, 3, 1).numpy()  # NHWC, as torchvision's CIFAR10.data
        self.labels = data.y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        pixels = self.images[index]
        image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
        return self.transform(image), self.labels[index]


def torchvision_loader(bundle: DatasetBundle, batch_size: int, num_workers: int, seed: int = 0) -> DataLoader:
    """The baseline: ``RandomCrop(size, padding) + RandomHorizontalFlip + ToTensor`` in a DataLoader."""
    from torchvision import transforms as T

    if not isinstance(bundle.train, ImageArrays):
        raise DataError(f"loader_throughput needs an in-memory dataset; '{bundle.name}' is read from files")
    steps = [T.RandomCrop(bundle.image_size, padding=bundle.crop_padding)] if bundle.crop_padding else []
    steps += [T.RandomHorizontalFlip()] if bundle.flip else []
    transform = T.Compose(steps + [T.ToTensor()])
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(PILImages(bundle.train, transform), batch_size=batch_size, shuffle=True, drop_last=True,
                      num_workers=num_workers, generator=generator, persistent_workers=False)


def _to_device(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> Iterator[torch.Tensor]:
    for x, y in batches:
        y.to(device, non_blocking=True)  # moved like a training loop would, then unused
        yield x.to(device, non_blocking=True)


def _images_per_second(batches: Iterator[torch.Tensor], max_batches: int, warmup: int) -> float:
    """Times ``max_batches`` batches after ``warmup`` untimed ones.

    Reading one element of the last batch back to the host waits for queued device work,
    so asynchronous devices are timed fully, with no device-specific synchronise call.
    """
    for _ in range(warmup):
        next(batches, None)
    count, start, last = 0, time.perf_counter(), None
    for _, last in zip(range(max_batches), batches):
        count += last.shape[0]
    if last is not None:
        last.reshape(-1)[-1].item()
    elapsed = time.perf_counter() - start
    return count / elapsed if count else 0.0


def loader_throughput(
    bundle: DatasetBundle | str,
    batch_size: int = 128,
    *,
    device: torch.device | str = "cpu",
    num_workers: tuple[int, ...] = (0, 2),
    max_batches: int = 40,
    warmup: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Images per second of the device-side loader and of the torchvision baseline.

    Args:
        bundle: an in-memory dataset, or a name for :func:`create_dataset`.
        batch_size: images per batch.
        device: where the batches must end up.
        num_workers: the baseline's DataLoader worker counts to measure.
        max_batches: timed batches per loader (fewer if an epoch is shorter).
        warmup: untimed batches first (worker start-up, allocator warm-up).

    Returns:
        ``{"device_loader": ips, "torchvision_workers_0": ips, ...}`` plus
        ``"speedup_workers_N"`` (device loader / baseline) for each worker count.
    """
    if isinstance(bundle, str):
        bundle = create_dataset(bundle)
    device = torch.device(device)
    loader = make_train_loader(bundle, batch_size, device=device, seed=seed)
    limit = min(max_batches, len(loader) - warmup)
    if limit < 1:
        raise DataError(f"'{bundle.name}' has too few training images for {warmup + 1} batches of {batch_size}")
    results = {"device_loader": _images_per_second((x for x, _ in loader), limit, warmup)}
    for workers in num_workers:
        baseline = _to_device(torchvision_loader(bundle, batch_size, workers, seed), device)
        results[f"torchvision_workers_{workers}"] = _images_per_second(baseline, limit, warmup)
    for workers in num_workers:
        results[f"speedup_workers_{workers}"] = results["device_loader"] / results[f"torchvision_workers_{workers}"]
    return results


def format_results(results: dict[str, float]) -> str:
    """A small plain-text table of :func:`loader_throughput`'s figures."""
    rows = [f"{name:<26} {value:>12,.0f} images/s" for name, value in results.items() if not name.startswith("speedup")]
    rows += [f"{name:<26} {value:>12.1f}x" for name, value in results.items() if name.startswith("speedup")]
    return "\n".join(rows)


__all__ = ["PILImages", "format_results", "loader_throughput", "torchvision_loader"]
