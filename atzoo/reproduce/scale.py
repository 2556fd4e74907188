"""Scaled reproductions: presets that shrink a table consistently for small machines.

A preset fixes the training subset, the number of epochs, the evaluation sizes and
optionally the architecture and the dataset. Everything defined in epochs or steps is
scaled with it, from each row's own resolved configuration, so that every method keeps
the *shape* of its schedule:

* ``optim.milestones`` and ``optim.warmup_epochs``: multiplied by ``epochs' / epochs``
  and rounded (a milestone that lands on or past the last epoch is dropped);
* ``averaging.swa_start_epoch`` (epochs) and ``averaging.swa_every_steps`` (steps, by
  the ratio of total training steps);
* ARREST's ``method.pretrain_epochs`` (epochs);
* ``diagnostics.every`` (steps, but never more often than ten times per run, since each
  measurement recomputes the loss's gradients).

Changing the architecture resets what is tied to the old one: AR-AT's explicit
``method.layers`` become the new model's default taps (its penultimate features), and
LBGAT's teacher becomes the new model. The scaled settings are written as plain
``section.key=value`` overrides, so each emitted command is self-contained, and every
output of a scaled reproduction says which preset made it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from atzoo.config import RunConfig
from atzoo.errors import ConfigError

def train_size(dataset: str) -> int | None:
    """Training images of a registered dataset, as it declares where it is registered
    (``train_size``; None for one that does not, e.g. ``npz:PATH``): the step ratio of
    step-defined settings."""
    from atzoo.registry import DATASETS, load_builtins

    load_builtins()
    return DATASETS.fact(dataset, "train_size")


@dataclass(frozen=True)
class Scale:
    """A preset. ``None`` keeps the row's own value.

    Attributes:
        name: what ``--scale`` accepts.
        summary: one line for ``--list`` and every output.
        epochs: training epochs (schedules scaled to it).
        train_subset: first N training images.
        test_subset: first N test images (clean and PGD-20).
        aa_examples: AutoAttack on the first N of those (``eval.n_ex``).
        model: architecture replacing the paper's.
        dataset: dataset replacing every row's (``digits`` for the test suite).
        batch_size: global batch.
        extra: further ``section.key=value`` settings (bookkeeping, e.g. no trackers).
    """

    name: str
    summary: str
    epochs: int
    train_subset: int | None = None
    test_subset: int | None = None
    aa_examples: int | None = None
    model: str | None = None
    dataset: str | None = None
    batch_size: int | None = None
    extra: tuple[str, ...] = ()

    def describe(self) -> str:
        """``scale cpu-small: small_cnn, 1024 training images, 4 epochs, ...`` for every output."""
        parts = [f"{self.model} instead of the paper's model" if self.model else None,
                 f"dataset {self.dataset}" if self.dataset else None,
                 f"{self.train_subset} training images" if self.train_subset else None,
                 f"{self.epochs} epochs (schedules scaled)",
                 f"batch {self.batch_size}" if self.batch_size else None,
                 f"clean/PGD-20 on {self.test_subset} test images" if self.test_subset else None,
                 f"AutoAttack on {self.aa_examples}" if self.aa_examples else None]
        return f"scale {self.name}: " + ", ".join(p for p in parts if p)


#: The presets ``--scale`` accepts.
SCALES: dict[str, Scale] = {
    s.name: s for s in (
        Scale("tiny", "seconds per run on the bundled digits: the test suite's end-to-end check", epochs=1,
              train_subset=64, test_subset=16, aa_examples=4, model="small_cnn", dataset="digits", batch_size=32,
              extra=("run.trackers=[]",)),
        Scale("cpu-small", "a CPU-only evidence run on a shared 2-core machine: small_cnn, a few hundred images",
              epochs=3, train_subset=256, test_subset=100, aa_examples=50, model="small_cnn", batch_size=32),
        Scale("gpu-hour", "the paper's model on a fifth of the data for 20 epochs: a one-GPU check of a row",
              epochs=20, train_subset=10_000, test_subset=2_000, aa_examples=1_000),
    )
}


def get_scale(name: str | None) -> Scale | None:
    """The preset called ``name`` (``None`` for the full-size table).

    Raises:
        ConfigError: unknown preset, naming the valid ones.
    """
    if name is None:
        return None
    if name not in SCALES:
        raise ConfigError(f"unknown --scale '{name}'; valid: {', '.join(SCALES)}")
    return SCALES[name]


def _scaled_epoch(value: float, ratio: float) -> int:
    return int(round(value * ratio))


def _total_steps(cfg: RunConfig, epochs: int, images: int | None) -> int | None:
    n = images if images is not None else train_size(cfg.data.name)
    if n is None:
        return None
    return max(1, epochs * (n // cfg.data.batch_size))


def paper_steps(cfg: RunConfig) -> int | None:
    """Total optimizer steps of the row's unscaled recipe (``None`` for an unknown dataset size)."""
    return _total_steps(cfg, cfg.optim.epochs, None)


def scale_overrides(cfg: RunConfig, scale: Scale, full_steps: int | None = None) -> list[str]:
    """``section.key=value`` settings that shrink the resolved row config ``cfg`` to ``scale``.

    ``cfg`` must already carry the preset's dataset, model and batch choices, so that the
    step ratio uses the scaled steps; ``full_steps`` are the unscaled recipe's total steps
    (:func:`paper_steps` of the row before any stand-in dataset; default: ``cfg``'s own).
    """
    full_epochs = cfg.optim.epochs
    ratio = scale.epochs / full_epochs
    out = [f"optim.epochs={scale.epochs}"]
    milestones = sorted({m for m in (_scaled_epoch(m, ratio) for m in cfg.optim.milestones) if 0 < m < scale.epochs})
    out.append(f"optim.milestones=[{', '.join(map(str, milestones))}]")
    out.append(f"optim.warmup_epochs={_scaled_epoch(cfg.optim.warmup_epochs, ratio)}")
    for key, value in (("data.train_subset", scale.train_subset), ("data.test_subset", scale.test_subset),
                       ("eval.n_ex", scale.aa_examples)):
        if value is not None:
            out.append(f"{key}={value}")
    full_steps = full_steps or _total_steps(cfg, full_epochs, None)
    new_steps = _total_steps(cfg, scale.epochs, scale.train_subset)
    step_ratio = new_steps / full_steps if full_steps and new_steps else ratio
    if cfg.averaging.swa:
        out.append(f"averaging.swa_start_epoch={math.floor(cfg.averaging.swa_start_epoch * ratio)}")
        out.append(f"averaging.swa_every_steps={max(1, round(cfg.averaging.swa_every_steps * step_ratio))}")
    if cfg.diagnostics.every:
        floor = max(1, (new_steps or scale.epochs) // 10)
        out.append(f"diagnostics.every={max(floor, round(cfg.diagnostics.every * step_ratio))}")
    if hasattr(cfg.method, "pretrain_epochs"):
        out.append(f"method.pretrain_epochs={max(1, _scaled_epoch(cfg.method.pretrain_epochs, ratio))}")
    return out + list(scale.extra)


def model_overrides(cfg: RunConfig, scale: Scale) -> list[str]:
    """Settings tied to the paper's architecture that a preset's ``model`` replaces."""
    if scale.model is None or scale.model == cfg.model.name:
        return []
    out = [f"model.name={scale.model}"]
    if getattr(cfg.method, "layers", None):  # AR-AT's taps name the old model's modules
        out.append("method.layers=null")
    if hasattr(cfg.method, "teacher"):  # LBGAT: the teacher follows the student's size
        out.append(f"method.teacher={scale.model}")
    return out
