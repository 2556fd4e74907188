"""Per-epoch validation on a held-out part of the training set, and the best weights.

Robust overfitting (Rice, Wong and Kolter, "Overfitting in adversarially robust deep
learning", ICML 2020): after the first learning-rate decay the robust *test* accuracy of
adversarial training falls while the robust training accuracy keeps rising, so a run's
last weights are often not its most robust. Rice et al. hold out 1,000 training images,
measure PGD accuracy on them every epoch and keep the best checkpoint ("early stopping").

What atzoo does, every ``eval.val_every`` epochs (and after the last one):

* the held-out set is ``data.val_size`` training images drawn with a fixed seed
  (:data:`VAL_SEED`, independent of ``run.seed``, so every run of a dataset holds out
  the same images); they are removed from the training set, and the test set is never
  touched. ``data.val_size: null`` holds out ``min(1000, N // 10)`` images when
  validation is on (Rice et al.'s 1,000 on CIFAR), none otherwise;
* clean and PGD accuracy (``eval.val_attack``, default PGD-10, under the evaluation's
  threat model, eval mode, a fixed random start per batch) on the held-out images and
  on as many fixed, unaugmented training images (the train curves);
* the deployable weights with the highest held-out robust accuracy are written to
  ``model_best.safetensors``; ``eval.weights: best`` exports and evaluates them
  (``model_last.safetensors`` keeps the last ones), ``last`` the reverse.

Nothing here draws from the global random generators, so a run with validation trains
exactly as one without it on the same training images, and a resumed run validates
exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from atzoo.config import RunConfig
from atzoo.data.bundle import DatasetBundle, ImageArrays, Split
from atzoo.errors import ConfigError, DataError

#: Seed of the held-out split: the same images for every run of a dataset.
VAL_SEED = 0
#: Held-out images when ``data.val_size`` is null (Rice et al. 2020 held out 1,000).
DEFAULT_VAL_SIZE = 1000


def val_size(cfg: RunConfig, n_train: int) -> int:
    """Training images to hold out (0: validation off).

    Raises:
        ConfigError: validation is on but the held-out set would be empty or would leave
            no training images.
    """
    if cfg.eval.val_every < 1:
        return 0
    size = cfg.data.val_size if cfg.data.val_size is not None else min(DEFAULT_VAL_SIZE, n_train // 10)
    if not 1 <= size < n_train:
        raise ConfigError(f"data.val_size must be in [1, {n_train - 1}] for a training set of {n_train} images "
                          f"(eval.val_every={cfg.eval.val_every} needs a held-out set), got {size}")
    return size


def split_indices(n: int, size: int) -> tuple[Tensor, Tensor]:
    """``(held_out, kept)`` sorted index tensors: ``size`` of ``range(n)`` drawn with :data:`VAL_SEED`."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED))
    return order[:size].sort().values, order[size:].sort().values


def take(split: Split, index: Tensor) -> Split:
    """The examples ``index`` of a split (a tensor gather for in-memory data)."""
    if isinstance(split, ImageArrays):
        return ImageArrays(split.x[index], split.y[index])
    return Subset(split, index.tolist())


def carve_validation(bundle: DatasetBundle, size: int) -> tuple[DatasetBundle, DatasetBundle | None]:
    """``(training bundle without the held-out images, validation bundle)``.

    The validation bundle's ``test`` split is the held-out set and its ``train`` split the
    first ``size`` remaining training images (for the train curves); with ``size`` 0 the
    bundle is returned unchanged with None.
    """
    if size == 0:
        return bundle, None
    held_out, kept = split_indices(len(bundle.train), size)
    train = take(bundle.train, kept)
    probe = take(train, torch.arange(min(size, len(kept))))
    return replace(bundle, train=train), replace(bundle, train=probe, test=take(bundle.train, held_out))


@dataclass
class Best:
    """The best validation so far (robust accuracy in percent, its epoch)."""

    robust_acc: float = float("-inf")
    epoch: int = -1

    def state_dict(self) -> dict[str, Any]:
        return {"robust_acc": self.robust_acc if self.epoch >= 0 else None, "epoch": self.epoch}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> "Best":
        if not state or state.get("epoch", -1) < 0:
            return cls()
        return cls(float(state["robust_acc"]), int(state["epoch"]))


class Validator:
    """Runs the per-epoch validation of a run and remembers the best epoch.

    Args:
        cfg: the run config (``eval.val_every``, ``eval.val_attack``, threat model).
        bundle: the validation bundle from :func:`carve_validation`.
        accelerator: the run's Accelerator (device, processes, reductions).
    """

    def __init__(self, cfg: RunConfig, bundle: DatasetBundle, accelerator: Any, *, with_fgsm: bool = False) -> None:
        from atzoo.eval.evaluator import ThreatModel, parse_attacks, pgd_steps_of

        self.cfg = cfg
        self.bundle = bundle
        self.acc = accelerator
        self.threat = ThreatModel.resolve(cfg.eval, cfg.attack, cfg.data.name)
        steps = pgd_steps_of(parse_attacks([cfg.eval.val_attack]))
        if len(steps) != 1:
            raise ConfigError(f"eval.val_attack must be one PGD attack such as pgd10, got {cfg.eval.val_attack!r}")
        self.steps = steps[0]
        self.best = Best()
        #: Also FGSM accuracy on the held-out set (the catastrophic-overfitting check, atzoo/engine/overfit.py).
        self.with_fgsm = with_fgsm

    @property
    def attack_name(self) -> str:
        return f"pgd{self.steps}"

    def due(self, epoch: int) -> bool:
        """Whether validation runs after the 0-based ``epoch`` (every ``val_every``, and the last)."""
        done = epoch + 1
        return done % self.cfg.eval.val_every == 0 or done == self.cfg.optim.epochs

    def run(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        """Clean and PGD accuracy (percent) on the held-out and the training probe images.

        Returns:
            the ``val`` row for metrics.jsonl (without ``step``); ``best`` is True when
            this epoch is the most robust so far (then :attr:`best` is updated).
        """
        from atzoo.attacks.mode import attack_mode

        with attack_mode(model, "eval", None) as net:
            val_clean, val_robust = self._accuracies(net, "test", epoch)
            train_clean, train_robust = self._accuracies(net, "train", epoch)
            fgsm = {"val_fgsm_acc": self._fgsm_accuracy(net, epoch)} if self.with_fgsm else {}
        improved = val_robust > self.best.robust_acc
        if improved:
            self.best = Best(val_robust, epoch)
        return {"kind": "val", "epoch": epoch, "attack": self.attack_name, "n_val": len(self.bundle.test),
                "val_clean_acc": val_clean, "val_robust_acc": val_robust, **fgsm,
                "train_clean_acc": train_clean, "train_robust_acc": train_robust,
                "best": improved, "best_epoch": self.best.epoch}

    def _fgsm_accuracy(self, net: nn.Module, epoch: int) -> float:
        """FGSM accuracy (percent; from ``x``, step eps) on the held-out images."""
        from atzoo.attacks import fgsm
        from atzoo.data import make_eval_loader

        acc = self.acc
        loader = make_eval_loader(self.bundle, self.cfg.data.eval_batch_size, device=acc.device,
                                  rank=acc.process_index, world_size=acc.num_processes, split="test")
        counts = torch.zeros(2, device=acc.device)
        for x, y in loader:
            x_adv = fgsm(net, x, y, eps=self.threat.eps, norm=self.threat.norm, mode="eval")
            with torch.no_grad():
                n = torch.tensor(y.numel(), device=y.device)
                counts += torch.stack([net(x_adv).argmax(1).eq(y).sum(), n]).float()
        if acc.num_processes > 1:
            counts = acc.reduce(counts, "sum")
        correct, n = counts.tolist()
        return 100.0 * correct / max(n, 1.0)

    def _accuracies(self, net: nn.Module, split: str, epoch: int) -> tuple[float, float]:
        """Clean and PGD accuracy on one split of the validation bundle, summed over processes."""
        from atzoo.attacks import pgd
        from atzoo.data import make_eval_loader

        acc = self.acc
        loader = make_eval_loader(self.bundle, self.cfg.data.eval_batch_size, device=acc.device,
                                  rank=acc.process_index, world_size=acc.num_processes, split=split)
        counts = torch.zeros(3, device=acc.device)
        offset = loader.start
        for x, y in loader:
            # A start fixed by (seed, epoch, position): reproducible, and no global RNG is used.
            gen = torch.Generator(device=x.device).manual_seed(self.cfg.run.seed + 1_000_003 * epoch + offset)
            x_adv = pgd(net, x, y, eps=self.threat.eps, step_size=self.threat.step_size, steps=self.steps,
                        norm=self.threat.norm, random_start="uniform", loss="ce", mode="eval", generator=gen)
            with torch.no_grad():
                counts += torch.stack([net(x).argmax(1).eq(y).sum(), net(x_adv).argmax(1).eq(y).sum(),
                                       torch.tensor(y.numel(), device=y.device)]).float()
            offset += x.shape[0]
        if acc.num_processes > 1:
            counts = acc.reduce(counts, "sum")
        clean, robust, n = counts.tolist()
        if n < 1:
            raise DataError("the validation set is empty")
        return 100.0 * clean / n, 100.0 * robust / n

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.best = Best.from_state((state or {}).get("best"))


def load_best(model: nn.Module, run_dir: Any) -> nn.Module:
    """A copy of the deployable ``model`` holding the weights of ``model_best.safetensors``."""
    import copy
    from pathlib import Path

    from safetensors.torch import load_file

    best = copy.deepcopy(model)
    state = load_file(str(Path(run_dir) / "model_best.safetensors"), device=str(next(best.parameters()).device))
    best.load_state_dict(state, strict=True)
    return best.eval()


def epoch_line(epoch: int, epochs: int, summary: dict[str, Any], lr: float, val: dict[str, Any] | None,
               eta_seconds: float | None, co: str = "") -> str:
    """One plain line per epoch (readable in a log file): epoch k/N, loss, accuracies, lr,
    seconds and ETA, e.g. ``epoch 3/10  loss 1.2345  train acc 41.20%  val clean 80.10%
    pgd10 40.20% (best)  lr 0.1  12.3 s  ETA 0:01:26``."""
    parts = [f"epoch {epoch + 1}/{epochs}", f"loss {summary['loss']:.4f}",
             f"train acc {100 * summary['train_acc']:.2f}%"]
    if val is not None:
        best = " (best)" if val["best"] else ""
        fgsm = f" fgsm {val['val_fgsm_acc']:.2f}%" if "val_fgsm_acc" in val else ""
        parts.append(f"val clean {val['val_clean_acc']:.2f}%{fgsm} {val['attack']} {val['val_robust_acc']:.2f}%{best}")
    if co:
        parts.append(co)  # the catastrophic-overfitting check (atzoo/engine/overfit.py)
    parts += [f"lr {lr:.4g}", f"{summary['seconds']:.1f} s"]
    if eta_seconds is not None:
        parts.append(f"ETA {_clock(eta_seconds)}")
    return "  ".join(parts)


def _clock(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
