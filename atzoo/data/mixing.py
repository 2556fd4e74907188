"""Batches that mix the original training set with an :class:`~atzoo.data.extra.ExtraSet`.

The sampling of the papers that train with extra data (Carmon et al. 2019, Gowal et al.
2021, Wang et al. 2023; the public code of the latter, ``core/data/semisup.py`` of
github.com/wzekai99/DM-Improves-AT, ``SemiSupervisedSampler``):

* every batch of ``B`` images holds ``int(B * f)`` extra images (``f`` =
  ``data.extra_fraction``; 0.7 in Gowal et al. 2021 and Wang et al. 2023, 0.5 in Carmon
  et al. 2019) and ``B - int(B * f)`` original ones;
* the original part walks a fresh permutation of the original set each epoch;
* the extra part is drawn uniformly **with replacement** (``torch.randint``), so a set
  of 20M images needs no permutation of 20M indices;
* **an epoch is defined by the original set**: as many batches as a plain epoch of the
  original set (the reference uses ``ceil(50000 / B)`` batches; atzoo keeps whole global
  batches, ``floor(N / (B * W))``, as its plain loader does). With ``f = 0.7`` an epoch
  thus shows 30% of the original images and ``0.7 * N`` extra ones, and the learning-rate
  schedule counts epochs exactly as the papers' does.

Determinism and resumption: as in :mod:`atzoo.data.sampling`, everything random about an
epoch (the permutation, the extra draws, every crop offset and flip) is drawn up front from
CPU generators seeded by ``(seed, epoch, stream)``, so ``iter_from(k)`` after a restart
yields exactly the batches an uninterrupted run yields: the sampler's state is a pure
function of (seed, epoch, batch), and (epoch, batch) are in every checkpoint.

Processes: global batch ``i`` is the union over ranks of their batch ``i``; its original
positions ``i*W*Bo .. (i+1)*W*Bo - 1`` and its extra draws ``i*W*Be .. (i+1)*W*Be - 1``
are dealt round-robin to the ranks (position ``p`` to rank ``p % W``), so each rank reads
its own rows and every rank's batch has the same share of extra images.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from atzoo.data.augment import augment_batch
from atzoo.data.bundle import ImageArrays
from atzoo.data.extra import ExtraSet
from atzoo.data.loaders import Batch, TrainLoader
from atzoo.data.sampling import EpochPlan
from atzoo.errors import DataError

# Streams of atzoo.data.sampling.epoch_generator; 0 is the plain loader's order.
_MIX_ORDER_STREAM = 1
_MIX_EXTRA_STREAM = 2
_MIX_AUGMENT_STREAM = 3


def extra_per_batch(batch_size: int, fraction: float) -> int:
    """Extra images in a batch of ``batch_size``: ``int(batch_size * fraction)``, as the
    reference sampler computes ``unsup_batch_size``."""
    return int(batch_size * fraction)


class MixedTrainLoader(TrainLoader):
    """Device-side loader of an in-memory original set plus rows read from an extra set.

    Each yielded batch is the ``Bo`` original images followed by the ``Be`` extra images
    (order inside a batch does not matter to a loss that averages over it, nor to
    BatchNorm), augmented alike with the original set's crop and flip.

    Attributes:
        extra_count: extra images in each batch (``Be``).
        shares: per-batch share of extra images since the last :meth:`take_shares`.
    """

    def __init__(
        self,
        data: ImageArrays,
        extra: ExtraSet,
        batch_size: int,
        *,
        fraction: float,
        crop_padding: int | None,
        flip: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(len(data), batch_size, **kwargs)
        if not 0.0 < fraction < 1.0:
            raise DataError(f"data.extra_fraction must be in (0, 1), got {fraction}")
        self.extra = extra
        self.extra_count = extra_per_batch(batch_size, fraction)
        self.original_count = batch_size - self.extra_count
        if self.extra_count < 1:
            raise DataError(f"data.extra_fraction={fraction} leaves no extra image in a batch of {batch_size} "
                            "per process; raise it or data.batch_size")
        if not self.drop_last:
            raise ValueError("mixed batches are whole batches (drop_last=True)")
        self.crop_padding = crop_padding
        self.flip = flip
        self.x = data.x.to(self.device)
        self.y = data.y.to(self.device)
        self.shares: list[float] = []

    # ------------------------------------------------------------------ the plan
    def plan(self) -> EpochPlan:
        """This rank's positions; an extra row ``j`` is encoded as index ``N + j``."""
        n, world, batches = self.num_examples, self.world_size, len(self)
        bo, be = self.original_count, self.extra_count
        from atzoo.data.sampling import epoch_generator

        order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch, _MIX_ORDER_STREAM))
        draws = torch.randint(len(self.extra), (batches * world * be,),
                              generator=epoch_generator(self.seed, self.epoch, _MIX_EXTRA_STREAM))
        original = order[: batches * world * bo].view(batches, world * bo)[:, self.rank::world]
        extra = (draws.view(batches, world * be)[:, self.rank::world]) + n
        indices = torch.cat([original, extra], dim=1).reshape(-1)  # (batches * B,): Bo original, Be extra
        augment = epoch_generator(self.seed, self.epoch, _MIX_AUGMENT_STREAM)
        total = batches * world * self.batch_size  # drawn for every global position, kept for this rank
        offsets = (torch.randint(0, 2 * self.crop_padding + 1, (total, 2), generator=augment)
                   if self.crop_padding is not None else None)
        flips = torch.randint(0, 2, (total,), generator=augment).bool() if self.flip else None
        mine = torch.arange(self.rank, total, world)
        return EpochPlan(indices, None if offsets is None else offsets[mine], None if flips is None else flips[mine])

    # ------------------------------------------------------------------ batches
    def _batches(self, plan: EpochPlan, start: int) -> Iterator[Batch]:
        n, bo = self.num_examples, self.original_count
        for batch in range(start, len(self)):
            part = plan.slice(*self._bounds(batch))
            original = part.indices[:bo].to(self.device)
            rows = part.indices[bo:].numpy() - n
            images, labels = self.extra.gather(rows)
            x_extra = torch.from_numpy(images).permute(0, 3, 1, 2).to(self.device)
            x = torch.cat([self.x[original], x_extra])
            y = torch.cat([self.y[original], torch.from_numpy(labels).to(self.device)])
            offsets = None if part.offsets is None else part.offsets.to(self.device)
            flips = None if part.flips is None else part.flips.to(self.device)
            self.shares.append(len(rows) / len(y))
            yield augment_batch(x, self.crop_padding or 0, offsets, flips), y

    def take_shares(self) -> list[float]:
        """The per-batch shares of extra images yielded since the last call (for the log)."""
        shares, self.shares = self.shares, []
        return shares


def share_summary(shares: list[float]) -> dict[str, float] | None:
    """``{min, max, mean}`` of per-batch extra shares, or None when there were none."""
    if not shares:
        return None
    values = np.asarray(shares)
    return {"min": round(float(values.min()), 6), "max": round(float(values.max()), 6),
            "mean": round(float(values.mean()), 6)}


def mixing_line(loader: MixedTrainLoader) -> str:
    """The run's mixing, for the log: rows, share, epoch length."""
    b, be = loader.batch_size, loader.extra_count
    return (f"data.extra: {len(loader.extra)} images from {loader.extra.spec} (digest {loader.extra.digest()}); "
            f"{be} of {b} images per batch per process are extra (share {be / b:.4f}), {b - be} original; "
            f"an epoch is {len(loader)} batches (defined by the original set)")
