"""The end of a run: final checkpoint, SWA BN recalibration, export and evaluation.

:class:`Finisher` is the component of :class:`~atzoo.engine.trainer.Trainer` that turns
the trained state into the run's deliverables: ``model.safetensors`` + ``model_meta.json``
(the deployable network: the SWA/EMA average, the best validated or the last iterate,
through ``method.export``), ``model_last.safetensors`` when another one is exported,
``eval.json`` and ``curves.png``; it also writes ``model_best.safetensors`` for the
validation. Its collaborators are given to its ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from atzoo import __version__, precision
from atzoo.config import RunConfig
from atzoo.files.common import atomic_write_bytes, atomic_write_json
from atzoo.engine.averaging import WeightAverage, recompute_bn_stats
from atzoo.engine.checkpoint import plain_state_dict
from atzoo.engine.identity import run_identity
from atzoo.engine.logs import Position, RunLog
from atzoo.engine.overfit import OverfitWatch
from atzoo.engine.progress import Reporter
from atzoo.engine.resume import CheckpointKeeper
from atzoo.engine.rundir import MetricsLog
from atzoo.engine.validation import Validator


class Finisher:
    """The end of the run and the exported models (see the module docstring).

    Args:
        cfg: the run's config.
        run_dir: the run directory.
        accelerator: the run's Accelerator.
        bundle: the training data (its classes, channels, statistics and identity go into the meta).
        core: the training module (its model is exported through ``method.export``).
        method: the method (``export``, its training attack and ``attack_route``).
        average: the SWA/EMA average.
        validator: the held-out validation (the best epoch), or None.
        co_watch: the catastrophic-overfitting checks (summarised in eval.json), or None.
        checkpoints: writes the final checkpoint.
        log: events and the trackers.
        metrics: ``metrics.jsonl`` (the ``final`` row).
        position: the run's counters.
        reporter: the console (whether evaluation shows a progress bar).
        attack_precision: the training attack's precision (the SWA BN pass attacks as in training).
        new_loader: makes a fresh training loader (the SWA BN pass).
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, accelerator: Any, *, bundle: Any, core: nn.Module,
                 method: Any, average: WeightAverage, validator: Validator | None, co_watch: OverfitWatch | None,
                 checkpoints: CheckpointKeeper,
                 log: RunLog, metrics: MetricsLog, position: Position, reporter: Reporter, attack_precision: str,
                 new_loader: Callable[[], Any]) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.acc = accelerator
        self.is_main = accelerator.is_main_process
        self.bundle = bundle
        self.core = core
        self.method = method
        self.average = average
        self.validator = validator
        self.co_watch = co_watch
        self.checkpoints = checkpoints
        self.log = log
        self.metrics = metrics
        self.position = position
        self.reporter = reporter
        self.attack_precision = attack_precision
        self.new_loader = new_loader

    def finish(self, *, stopped: str | None = None) -> None:
        """Final checkpoint, SWA BN recalibration, export, evaluation, final row.

        ``stopped``: why training ended before ``optim.epochs`` (``eval.on_co``), or None.
        """
        self.checkpoints.save_unless_saved()
        deploy, weights = self.deployable_model()
        if self.is_main:
            self.export(deploy, "model.safetensors", weights)
            if weights != "last":
                self.export(self.method.export(self.core.model), "model_last.safetensors", "last")
        self.acc.wait_for_everyone()
        final = {"kind": "final", "step": self.position.global_step, "weights": weights,
                 "n_averaged": self.average.n_averaged}
        if self.cfg.run.evaluate:
            final["eval"] = self.evaluate(deploy, weights, stopped=stopped)
        self.metrics.write(final)
        self.log.finish_trackers(final.get("eval", {}))  # the final numbers go to the trackers first
        if self.is_main:
            self.write_curves()

    def write_curves(self) -> None:
        """``curves.png``: loss, train/validation accuracies and lr per epoch (matplotlib)."""
        from atzoo.engine.curves import plot_curves, run_curves, run_title

        atomic_write_bytes(self.run_dir / "curves.png", plot_curves({self.run_dir.name: run_curves(self.run_dir)},
                                                                    title=run_title(self.run_dir.name, self.cfg)))

    def deployable_model(self) -> tuple[nn.Module, str]:
        """The exported network and which weights it holds (``swa``, ``ema``, ``best`` or ``last``)."""
        if self.cfg.eval.weights == "best" and self.validator is not None and self.validator.best.epoch >= 0:
            from atzoo.engine.validation import load_best

            self.acc.wait_for_everyone()  # the main process wrote model_best.safetensors
            return load_best(self.method.export(self.core.model), self.run_dir), "best"
        if not self.average.enabled or self.average.n_averaged == 0:
            if self.average.enabled:
                self.log.event("averaging", f"{self.average.kind} has no update yet; exporting the last iterate")
            return self.method.export(self.core.model).eval(), "last"
        averaged = self.average.module()
        if self.average.kind == "swa":
            batches = self.recalibrate_bn(averaged)
            self.log.event("swa_bn",
                           f"recomputed the BN statistics of the SWA average on {batches} adversarial batches")
        return self.method.export(averaged).eval(), str(self.average.kind)

    def recalibrate_bn(self, model: nn.Module) -> int:
        """One pass over the training data with the run's training attack (its settings, in
        train mode, through the method's ``attack_route``) to rebuild the average's BN statistics."""
        route = self.method.attack_route
        attack = self.method.ctx.attack

        def adversarial(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            with precision.autocast(self.attack_precision, x.device):  # as in training
                return attack(net, x, y, route=route, mode="train")

        loader = self.new_loader()
        loader.set_epoch(self.cfg.optim.epochs)  # a fixed, reproducible pass
        with self.acc.autocast():
            return recompute_bn_stats(model, loader, adversarial, route=route,
                                      reduce_mean=lambda t: self.acc.reduce(t, "mean"))

    def export(self, model: nn.Module, filename: str, weights: str) -> None:
        """Writes a plain model's weights (safetensors) and, for the deployable one, its meta."""
        from atzoo.models.timm_models import portable_module  # timm runs export timm's own keys

        atomic_write_bytes(self.run_dir / filename, safetensors_save(plain_state_dict(portable_module(model))))
        if filename == "model.safetensors":
            atomic_write_json(self.run_dir / "model_meta.json", self.model_meta(weights))

    def model_meta(self, weights: str) -> dict[str, Any]:
        """What ``atzoo.eval.load_run_model`` needs to rebuild the exported network."""
        b = self.bundle
        return {
            "model": self.cfg.model.name, "num_classes": b.num_classes, "in_channels": b.in_channels,
            "image_size": b.image_size, "normalize": self.cfg.model.normalize,
            "mean": list(b.mean), "std": list(b.std), "method": self.cfg.method.name,
            "dataset": self.cfg.data.name, "weights": weights, "atzoo_version": __version__,
            **run_identity(self.cfg, b),  # data fingerprint and provenance (atzoo.engine.identity)
        }

    def evaluate(self, model: nn.Module, weights: str, *, stopped: str | None = None) -> dict[str, Any]:
        """``atzoo.eval.evaluate`` on the exported model; it writes eval.json (main process),
        to which the engine adds which weights were evaluated."""
        from atzoo.eval import evaluate

        show = self.is_main and self.reporter.console.is_terminal
        payload = evaluate(model, self.bundle, self.cfg.eval, attack_cfg=self.cfg.attack, accelerator=self.acc,
                           progress=show, out=self.run_dir, meta=self.model_meta(weights), seed=self.cfg.run.seed)
        payload["weights"] = weights
        if self.validator is not None:
            payload["validation"] = {"best_epoch": self.validator.best.epoch, "attack": self.validator.attack_name,
                                     "best_robust_acc": self.validator.best.state_dict()["robust_acc"],
                                     "n_val": len(self.validator.bundle.test)}
        if self.co_watch is not None:  # atzoo/engine/overfit.py
            payload["catastrophic_overfitting"] = {**self.co_watch.summary(), "stopped": stopped,
                                                   "on_co": self.cfg.eval.on_co}
        if self.is_main:
            atomic_write_json(self.run_dir / "eval.json", payload)
        self.acc.wait_for_everyone()
        return {k: payload[k] for k in ("clean_acc", "pgd20_acc", "autoattack_acc") if payload.get(k) is not None}
