"""Minibatch replay (:attr:`atzoo.methods.base.Method.replays`): each loader batch, ``m`` times in a row.

Free-AT (Shafahi et al. 2019) trains ``m`` times on each minibatch. The trainer counts
*replayed* batches: an epoch holds ``len(loader) * m`` of them, the ``k``-th being loader
batch ``k // m``, so a run resumed at any replayed batch continues exactly where an
uninterrupted one would (the loader's own ``iter_from`` gives the same batches).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor


def replayed_batches(loader: Any, start: int, replays: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The loader's batches from replayed batch ``start`` on, each ``replays`` times in a row."""
    if replays <= 1:
        yield from loader.iter_from(start)
        return
    first, skip = divmod(start, replays)
    for index, (x, y) in enumerate(loader.iter_from(first)):
        for _ in range(skip if index == 0 else 0, replays):
            yield x, y
