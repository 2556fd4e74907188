"""The training engine: one Accelerate loop for every method.

* :func:`plan_run` -- the one planning of a run (config with each value's source, run
  directory, notes) for ``atzoo train``, :func:`atzoo.train`, ``reproduce`` and the demo;
  :func:`run_plan` runs a plan (:mod:`atzoo.engine.plan`).
* :func:`train` -- build, (re)start, loop, export and evaluate one run
  (:mod:`atzoo.engine.trainer`; its components: :mod:`~atzoo.engine.resume` run directory
  and checkpoints, :mod:`~atzoo.engine.logs` logging, :mod:`~atzoo.engine.finish` export
  and evaluation; :mod:`~atzoo.engine.needs` what methods declare they need).
* :func:`~atzoo.engine.step.train_step` -- the one training step (trainer and benchmark).
* :class:`TrainingModule` -- the single module Accelerate prepares; its forward is the
  method's loss, so every pass of a step shares one DDP synchronisation.
* Checkpoints (:mod:`atzoo.engine.checkpoint`): atomic, SHA-256 verified, keep-last-K,
  safetensors + ``torch.load(weights_only=True)``; resume falls back to the newest good one.
* Learning-rate schedules (:mod:`atzoo.engine.schedules`), SWA/EMA and adversarial BN
  recalibration (:mod:`atzoo.engine.averaging`), the run directory and metrics log
  (:mod:`atzoo.engine.rundir`).
"""

from atzoo.engine.averaging import WeightAverage, averaging_kind, recompute_bn_stats
from atzoo.engine.checkpoint import (
    CheckpointData,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from atzoo.engine.module import TrainingModule
from atzoo.engine.plan import RunPlan, plan_run, run_plan
from atzoo.engine.rundir import default_run_name, read_metrics, resolve_run_dir
from atzoo.engine.schedules import build_scheduler, lr_factor
from atzoo.engine.trainer import train
from atzoo.errors import NonFiniteLossError

__all__ = [
    "CheckpointData",
    "NonFiniteLossError",
    "RunPlan",
    "TrainingModule",
    "WeightAverage",
    "averaging_kind",
    "build_scheduler",
    "default_run_name",
    "find_resume_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_factor",
    "plan_run",
    "read_metrics",
    "recompute_bn_stats",
    "resolve_run_dir",
    "run_plan",
    "save_checkpoint",
    "train",
    "verify_checkpoint",
]
