"""Catastrophic overfitting (CO): detecting it each epoch, and stopping or rolling back.

Single-step adversarial training (FGSM-RS, and FGSM training in general) can collapse
within an epoch: the network becomes locally highly non-linear, the FGSM example stops
being a good approximation of the worst case, FGSM accuracy *climbs* while PGD accuracy
falls to ~0 (Wong, Rice and Kolter, ICLR 2020, Sec. 5.2 and Fig. 3; Andriushchenko and
Flammarion, NeurIPS 2020, Sec. 3). A user who watches only the training loss never sees
it: the loss keeps falling.

What atzoo measures, after each epoch: FGSM accuracy (from ``x``, step eps, under the
evaluation's threat model) and PGD accuracy (``eval.val_attack``, default PGD-10) on

* the held-out validation set, when ``eval.val_every`` is on (the FGSM accuracy is
  added to the validation row; PGD is the validation's own number), else
* a fixed probe of :data:`PROBE_SIZE` unaugmented training images (the first ones of
  the training set; nothing is held out). Andriushchenko and Flammarion's official
  code detects CO on training images ("catastrophic overfitting can be detected on the
  training set", ``train.py``), and Wong et al.'s early stopping uses one training batch.

``eval.co_check=auto`` (the default) turns this on for single-step methods
(``Method.single_step``) and whenever ``eval.val_every`` is on; ``on``/``off`` force it.

The flag (:func:`co_flag`), with thresholds and their sources:

* **PGD drop** >= :data:`PGD_DROP_POINTS` (20 percentage points) below the most robust
  earlier check. The 20 points are Wong et al.'s early-stopping rule (official
  ``CIFAR10/train_fgsm.py --early-stop``: stop when the PGD accuracy of a training batch
  falls more than 0.2 below the previous check). atzoo compares with the *best* earlier
  check rather than the previous one so that a collapse spread over two epochs is
  caught too (atzoo's choice);
* **FGSM holds**: FGSM accuracy at most :data:`FGSM_TOLERANCE_POINTS` (5 points) below
  its value at that best check (atzoo's choice). This is what separates CO from a run
  that simply gets worse (both accuracies fall) -- the signature in Wong et al.'s Fig. 3
  and Andriushchenko and Flammarion's Fig. 1 is FGSM up, PGD down.

A flagged epoch is printed in the epoch line, written as a ``co`` row in metrics.jsonl,
marked in curves.png and summarised in eval.json (``catastrophic_overfitting``).
``eval.on_co``: ``warn`` (default) only reports; ``stop`` ends training after the
flagged epoch; ``rollback`` ends it and restores the weights of the most robust check
(what Wong et al.'s early stopping and both official codes' ``best_state_dict`` keep).

Limits: the checks' history is checkpointed (a resumed run flags as an uninterrupted one),
but the rollback weights are kept in memory only, so after a resume ``rollback`` can go back
only to a check made since; and a run stopped by ``eval.on_co`` and then resumed with
``--resume`` trains on to ``optim.epochs``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from atzoo.config import RunConfig

#: Wong et al. 2020 (official ``train_fgsm.py --early-stop``): a PGD accuracy drop of 0.2.
PGD_DROP_POINTS = 20.0
#: atzoo's choice: FGSM accuracy "holds" while it falls by at most this many points.
FGSM_TOLERANCE_POINTS = 5.0
#: Training images of the probe (Andriushchenko & Flammarion's ``n_eval_every_k_iter=256``).
PROBE_SIZE = 256


@dataclass
class Check:
    """One epoch's CO check: FGSM and PGD accuracy in percent."""

    epoch: int
    fgsm_acc: float
    pgd_acc: float


def co_flag(history: list[Check], now: Check, *, drop: float = PGD_DROP_POINTS,
            tolerance: float = FGSM_TOLERANCE_POINTS) -> bool:
    """Whether ``now`` shows catastrophic overfitting against the earlier checks.

    True when PGD accuracy fell by at least ``drop`` points below the most robust earlier
    check while FGSM accuracy stayed within ``tolerance`` points of its value there (or rose).
    """
    if not history:
        return False
    best = max(history, key=lambda c: c.pgd_acc)
    return best.pgd_acc - now.pgd_acc >= drop and now.fgsm_acc >= best.fgsm_acc - tolerance


def co_enabled(cfg: RunConfig, single_step: bool) -> bool:
    """``eval.co_check``: on, off, or auto (single-step methods, or validation on)."""
    mode = cfg.eval.co_check
    if mode != "auto":
        return mode == "on"
    return single_step or cfg.eval.val_every > 0


@dataclass
class Detector:
    """The checks so far and the epochs flagged (state of a run; checkpointed)."""

    history: list[Check] = field(default_factory=list)
    flagged: list[int] = field(default_factory=list)

    def observe(self, check: Check) -> dict[str, Any]:
        """Adds one check; returns the ``co`` row fields (``flagged``, the drop and change)."""
        best = max(self.history, key=lambda c: c.pgd_acc) if self.history else None
        flagged = co_flag(self.history, check)
        self.history.append(check)
        if flagged:
            self.flagged.append(check.epoch)
        return {"fgsm_acc": check.fgsm_acc, "pgd_acc": check.pgd_acc, "flagged": flagged,
                "ref_epoch": best.epoch if best else None,
                "pgd_drop": round(best.pgd_acc - check.pgd_acc, 4) if best else None,
                "fgsm_change": round(check.fgsm_acc - best.fgsm_acc, 4) if best else None}

    def is_best(self, check: Check) -> bool:
        """Whether ``check`` (just observed) is the most robust so far."""
        return all(check.pgd_acc >= c.pgd_acc for c in self.history)

    def summary(self, where: str, attack: str) -> dict[str, Any]:
        """The ``catastrophic_overfitting`` entry of eval.json."""
        return {"detected": bool(self.flagged), "first_epoch": self.flagged[0] if self.flagged else None,
                "epochs": list(self.flagged), "on": where, "attack": attack,
                "criterion": f"{attack} accuracy >= {PGD_DROP_POINTS:g} points below the most robust earlier check "
                             f"while FGSM accuracy stays within {FGSM_TOLERANCE_POINTS:g} points (Wong et al. 2020)",
                "history": [asdict(c) for c in self.history]}

    def state_dict(self) -> dict[str, Any]:
        return {"history": [asdict(c) for c in self.history], "flagged": list(self.flagged)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.history = [Check(int(c["epoch"]), float(c["fgsm_acc"]), float(c["pgd_acc"]))
                        for c in state.get("history", [])]
        self.flagged = [int(e) for e in state.get("flagged", [])]


def fgsm_pgd_accuracy(net: nn.Module, loader: Any, *, threat: Any, step_size: float, steps: int, seed: int,
                      accelerator: Any) -> tuple[float, float, float]:
    """Clean, FGSM and PGD accuracy (percent) of ``net`` (eval mode) over ``loader``, summed
    over processes. The PGD start is fixed by ``(seed, position)``: no global RNG is used."""
    from atzoo.attacks import fgsm, pgd
    from atzoo.attacks.mode import attack_mode

    counts = torch.zeros(4, device=accelerator.device)
    offset = loader.start
    with attack_mode(net, "eval", None) as model:
        for x, y in loader:
            gen = torch.Generator(device=x.device).manual_seed(seed + offset)
            x_fgsm = fgsm(model, x, y, eps=threat.eps, norm=threat.norm, mode="eval")
            x_pgd = pgd(model, x, y, eps=threat.eps, step_size=step_size, steps=steps, norm=threat.norm,
                        random_start="uniform", loss="ce", mode="eval", generator=gen)
            with torch.no_grad():
                counts += torch.stack([model(x).argmax(1).eq(y).sum(), model(x_fgsm).argmax(1).eq(y).sum(),
                                       model(x_pgd).argmax(1).eq(y).sum(),
                                       torch.tensor(y.numel(), device=y.device)]).float()
            offset += x.shape[0]
    if accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, "sum")
    clean, fgsm_ok, pgd_ok, n = counts.tolist()
    n = max(n, 1.0)
    return 100.0 * clean / n, 100.0 * fgsm_ok / n, 100.0 * pgd_ok / n


class OverfitWatch:
    """The run's CO check: where it measures, the detector, and the weights to roll back to.

    Args:
        cfg: the run config (``eval.co_check``, ``eval.on_co``, threat model, seed).
        train_bundle: the training bundle (the probe's images when there is no validation).
        accelerator: the run's Accelerator.
        use_validation: measure on the validation rows (``eval.val_every`` on) instead of the probe.
    """

    def __init__(self, cfg: RunConfig, train_bundle: Any, accelerator: Any, *, use_validation: bool) -> None:
        from atzoo.eval.evaluator import ThreatModel, parse_attacks, pgd_steps_of

        self.cfg = cfg
        self.bundle = train_bundle
        self.acc = accelerator
        self.use_validation = use_validation
        self.threat = ThreatModel.resolve(cfg.eval, cfg.attack, cfg.data.name)
        self.steps = pgd_steps_of(parse_attacks([cfg.eval.val_attack]))[0]
        # The probe's PGD must reach the eps-ball's boundary whatever eps is (2/255 x 10 steps does not
        # at eps 0.3): at least Madry et al.'s 2.5 * eps / steps.
        self.step_size = max(float(self.threat.step_size), 2.5 * float(self.threat.eps) / self.steps)
        self.detector = Detector()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch = -1

    @property
    def where(self) -> str:
        return "validation" if self.use_validation else f"train_probe_{PROBE_SIZE}"

    @property
    def attack_name(self) -> str:
        return f"pgd{self.steps}"

    def probe(self, net: nn.Module, epoch: int) -> tuple[float, float]:
        """FGSM and PGD accuracy on the first :data:`PROBE_SIZE` training images (unaugmented)."""
        from atzoo.data import make_eval_loader

        loader = make_eval_loader(self.bundle, self.cfg.data.eval_batch_size, device=self.acc.device,
                                  rank=self.acc.process_index, world_size=self.acc.num_processes, split="train",
                                  limit=PROBE_SIZE)
        _, fgsm_acc, pgd_acc = fgsm_pgd_accuracy(net, loader, threat=self.threat, step_size=self.step_size,
                                                 steps=self.steps,
                                                 seed=self.cfg.run.seed + 1_000_003 * epoch, accelerator=self.acc)
        return fgsm_acc, pgd_acc

    def check(self, model: nn.Module, deployable: nn.Module, epoch: int,
              val_row: dict[str, Any] | None) -> dict[str, Any] | None:
        """This epoch's check (None when it has no measurement, e.g. validation not due).

        Returns the ``co`` row for metrics.jsonl (without ``step``). With ``eval.on_co=rollback``
        the training model's weights of the most robust check are kept in memory.
        """
        if self.use_validation:
            if val_row is None or "val_fgsm_acc" not in val_row:
                return None
            fgsm_acc, pgd_acc = float(val_row["val_fgsm_acc"]), float(val_row["val_robust_acc"])
        else:
            fgsm_acc, pgd_acc = self.probe(deployable, epoch)
        check = Check(epoch, fgsm_acc, pgd_acc)
        fields = self.detector.observe(check)
        if self.cfg.eval.on_co == "rollback" and self.detector.is_best(check) and not fields["flagged"]:
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.best_epoch = epoch
        return {"kind": "co", "epoch": epoch, "on": self.where, "attack": self.attack_name, **fields}

    def action(self, row: dict[str, Any] | None) -> str | None:
        """``stop``/``rollback`` when this row is flagged and ``eval.on_co`` asks for it."""
        if row is None or not row["flagged"] or self.cfg.eval.on_co == "warn":
            return None
        return self.cfg.eval.on_co

    def roll_back(self, model: nn.Module) -> int | None:
        """Loads the kept weights into ``model``; returns their epoch (None when none were kept)."""
        if self.best_state is None:
            return None
        with torch.no_grad():
            model.load_state_dict(copy.deepcopy(self.best_state))
        return int(self.best_epoch)

    def summary(self) -> dict[str, Any]:
        return self.detector.summary(self.where, self.attack_name)

    def state_dict(self) -> dict[str, Any]:
        return self.detector.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.detector.load_state_dict(state)


def co_text(row: dict[str, Any] | None, *, with_accuracies: bool) -> str:
    """The epoch line's CO part: ``fgsm 62.1% pgd10 3.5%`` (probe) and the flag when raised."""
    if row is None:
        return ""
    text = f"co-probe fgsm {row['fgsm_acc']:.2f}% {row['attack']} {row['pgd_acc']:.2f}%" if with_accuracies else ""
    if row["flagged"]:
        flag = (f"CATASTROPHIC OVERFITTING: {row['attack']} -{row['pgd_drop']:.1f} pts since epoch "
                f"{row['ref_epoch'] + 1}, fgsm {row['fgsm_change']:+.1f} pts")
        text = f"{text}  {flag}" if text else flag
    return text
