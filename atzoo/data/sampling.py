"""Deterministic epoch order, per-example augmentation draws, and sharding.

Everything random about an epoch is drawn up front from a CPU ``torch.Generator`` seeded
by ``(seed, epoch)``: the permutation and, for every *position* in it, the crop offsets
and the flip (or, for DataLoader-backed data, a per-example transform seed). So

* the global RNG is never touched (attacks use it), and results do not depend on what
  else ran before;
* every rank draws the same plan and keeps its own positions, which partitions the epoch;
* resuming at batch ``k`` (``TrainLoader.iter_from``) slices the same plan, so it yields
  exactly the batches an uninterrupted run yields from ``k`` on;
* the generator lives on the CPU, so a plan is the same on every kind of device.

Sharding follows ``DistributedSampler``: position ``p`` of the (truncated) permutation
goes to rank ``p % world_size``. Global batch ``i`` (the union over ranks of their batch
``i``) is therefore positions ``i*W*B .. (i+1)*W*B - 1``, the same examples a single
process with batch ``W*B`` would see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# Distinct streams for distinct purposes, so adding one never shifts another.
_ORDER_STREAM = 0


def epoch_generator(seed: int, epoch: int, stream: int = _ORDER_STREAM) -> torch.Generator:
    """A CPU generator whose state is a well-mixed function of ``(seed, epoch, stream)``.

    ``numpy.random.SeedSequence`` hashes the tuple, so neighbouring seeds and epochs give
    unrelated streams (``seed + epoch`` would make seed 1 epoch 0 equal seed 0 epoch 1).
    """
    state = np.random.SeedSequence([seed % 2**63, epoch % 2**63, stream]).generate_state(1, np.uint64)[0]
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(state) >> 1)  # manual_seed accepts < 2**63 on every build
    return generator


@dataclass
class EpochPlan:
    """This rank's share of one epoch, in order.

    Attributes:
        indices: dataset indices, ``int64`` (M,), M = batches * batch_size (or fewer
            in the last batch when ``drop_last`` is off).
        offsets: crop offsets (row, column) in the padded image, ``int64`` (M, 2), or None.
        flips: ``bool`` (M,) horizontal flips, or None.
        sample_seeds: ``int64`` (M,) per-example transform seeds, or None.
    """

    indices: torch.Tensor
    offsets: torch.Tensor | None = None
    flips: torch.Tensor | None = None
    sample_seeds: torch.Tensor | None = None

    def to(self, device: torch.device) -> "EpochPlan":
        """The same plan with its tensors on ``device`` (one transfer per epoch)."""
        return self._map(lambda t: t.to(device))

    def slice(self, start: int, stop: int) -> "EpochPlan":
        """Positions ``start:stop`` of the plan (one batch)."""
        return self._map(lambda t: t[start:stop])

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "EpochPlan":
        """Applies ``fn`` to every tensor of the plan (the optional ones stay None)."""
        tensors = (self.indices, self.offsets, self.flips, self.sample_seeds)
        return EpochPlan(*(None if t is None else fn(t) for t in tensors))


def usable_examples(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """How many positions of the permutation are used this epoch (the rest are dropped).

    With ``drop_last`` only whole global batches (``batch_size * world_size``) are kept, so
    every rank runs the same number of full batches. Without it the epoch is cut to a
    multiple of ``world_size`` (dropping fewer than ``world_size`` examples), so every rank
    still runs the same number of batches, the last one smaller.
    """
    step = batch_size * world_size if drop_last else world_size
    return (n // step) * step


def make_plan(
    n: int,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    batch_size: int,
    drop_last: bool,
    crop_padding: int | None = None,
    flip: bool = False,
    sample_seeds: bool = False,
) -> EpochPlan:
    """Draws the epoch (same on every rank) and returns ``rank``'s positions.

    Args:
        n: training set size.
        crop_padding: draw crop offsets in ``[0, 2 * crop_padding]`` (None: no crop).
        flip: draw horizontal flips.
        sample_seeds: draw one transform seed per example (DataLoader-backed data).
    """
    generator = epoch_generator(seed, epoch)
    # The draw order is fixed and independent of rank/world_size: all ranks agree.
    perm = torch.randperm(n, generator=generator)
    offsets = torch.randint(0, 2 * crop_padding + 1, (n, 2), generator=generator) if crop_padding is not None else None
    flips = torch.randint(0, 2, (n,), generator=generator).bool() if flip else None
    seeds = torch.randint(0, 2**62, (n,), generator=generator) if sample_seeds else None
    positions = torch.arange(rank, usable_examples(n, batch_size, world_size, drop_last), world_size)
    return EpochPlan(perm, offsets, flips, seeds)._map(lambda t: t[positions])


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of ``n`` examples for ``rank``; sizes differ by at most 1.

    Every example belongs to exactly one rank, with no padding duplicates (unlike
    ``DistributedSampler``, which repeats examples to even out the shards).
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def check_rank(rank: int, world_size: int) -> None:
    """Programming errors in the process layout (not user input)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
