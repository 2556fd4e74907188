"""Batch augmentation as tensor ops on the device: random crop with zero padding + flip.

This is the augmentation of the adversarial-training papers (Madry et al. 2018, Zhang et
al. 2019 and every method here use ``RandomCrop(32, padding=4)`` +
``RandomHorizontalFlip()`` on CIFAR), applied to a whole ``uint8`` batch at once instead of
one PIL image at a time. The random draws come in as tensors (see
:mod:`atzoo.data.sampling`), so this module holds no RNG state.

A crop of the zero-padded image at offset (r, c) followed by an optional left-right flip
is one gather per axis: output row ``i`` reads padded row ``r + i``; output column ``j``
reads padded column ``c + j``, or ``c + W - 1 - j`` when flipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` images -> ``float32`` in [0, 1] (the convention of every atzoo model)."""
    return x.to(torch.float32).div_(255)


def crop_flip(
    x: torch.Tensor,
    padding: int,
    offsets: torch.Tensor | None,
    flips: torch.Tensor | None,
) -> torch.Tensor:
    """Crops each image of a batch from its zero-padded version, then flips it.

    Args:
        x: ``uint8`` (B, C, H, W) images.
        padding: zero padding on every side before cropping back to (H, W).
        offsets: ``int64`` (B, 2) top-left (row, column) of each crop in the padded image,
            each in ``[0, 2 * padding]``; None: no crop (offset = padding).
        flips: ``bool`` (B,), True flips that image left-right; None: no flip.

    Returns:
        ``uint8`` (B, C, H, W), on the device of ``x``.
    """
    if offsets is None and flips is None:
        return x
    batch, channels, height, width = x.shape
    if offsets is None:
        padding, offsets = 0, torch.zeros(batch, 2, dtype=torch.long, device=x.device)
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    rows = offsets[:, 0:1] + torch.arange(height, device=x.device)  # (B, H)
    cols = torch.arange(width, device=x.device).expand(batch, width)
    if flips is not None:
        cols = torch.where(flips[:, None], width - 1 - cols, cols)
    cols = offsets[:, 1:2] + cols  # (B, W)
    # Expanded (stride-0) index tensors: no copy of the index per channel.
    rows = rows[:, None, :, None].expand(batch, channels, height, padded.shape[3])
    cols = cols[:, None, None, :].expand(batch, channels, height, width)
    return padded.gather(2, rows).gather(3, cols)


def augment_batch(
    x: torch.Tensor,
    padding: int,
    offsets: torch.Tensor | None,
    flips: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`crop_flip` on ``uint8`` then conversion to ``float32`` in [0, 1].

    Cropping the ``uint8`` batch before the conversion moves a quarter of the bytes.
    """
    return to_unit_float(crop_flip(x, padding, offsets, flips))
