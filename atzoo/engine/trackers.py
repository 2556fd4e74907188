"""Experiment trackers (``run.trackers``): TensorBoard, Weights & Biases, MLflow, ... through
Accelerate, under one project name, with the config at the start and the final numbers at
the end.

* The project (``run.project``): the wandb project, the MLflow experiment, the Comet/Aim
  project. Default: ``$WANDB_PROJECT`` when set, else the run name's family (the run name
  without its ``-s<seed>`` suffix, so that the seeds of one setting share a project).
* Each tracker's run is named after the run directory.
* TensorBoard always writes to ``<run dir>/tensorboard/`` (one event stream per start,
  in that one folder): the config as text on a fresh start, and at the end one hparams
  entry (config + final clean/PGD/AutoAttack accuracy) in the same folder. Accelerate's own
  ``store_init_configuration`` would add a new timestamped sub-folder at every start and
  resume, which TensorBoard lists as extra runs.
* Every other tracker gets the config at each start (``store_init_configuration``) and
  the final numbers as ``final/<metric>`` at the last step.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, TensorBoardTracker

from atzoo.config import RunConfig, config_to_dict
from atzoo.files.common import flatten

#: The folder of the TensorBoard event files inside the run directory.
TENSORBOARD_DIR = "tensorboard"

#: The eval.json keys sent to the trackers at the end of a run.
FINAL_METRICS = ("clean_acc", "pgd20_acc", "autoattack_acc")


def tracker_project(cfg: RunConfig, run_dir: Path) -> str:
    """``run.project``, else ``$WANDB_PROJECT``, else the run name without ``-s<seed>``."""
    if cfg.run.project:
        return cfg.run.project
    env = os.environ.get("WANDB_PROJECT", "").strip()
    if env:
        return env
    return re.sub(r"-s\d+$", "", run_dir.name) or run_dir.name


class RunTensorBoard(TensorBoardTracker):
    """Accelerate's TensorBoard tracker, writing into ``<run dir>/tensorboard`` whatever the
    project, with the config and final numbers in that folder (no per-start sub-folders)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(TENSORBOARD_DIR, str(run_dir))

    def store_init_configuration(self, values: dict) -> None:  # noqa: D102 (see the class)
        if getattr(self, "writer", None) is None:
            return
        lines = "\n".join(f"{k}: {v}" for k, v in values.items())
        self.writer.add_text("config", f"```\n{lines}\n```", global_step=0)
        self.writer.flush()

    def log_final(self, config: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """One hparams entry (config and final numbers) in the run's own folder."""
        if getattr(self, "writer", None) is None:
            return
        from torch.utils.tensorboard.summary import hparams

        tags = {f"final/{k}": float(v) for k, v in metrics.items()}
        experiment, start, end = hparams(config, tags)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)
        for tag, value in tags.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()


def tracker_objects(names: list[str], run_dir: Path) -> list[str | GeneralTracker]:
    """What Accelerate's ``log_with`` gets: TensorBoard as :class:`RunTensorBoard`, the rest by name."""
    return [RunTensorBoard(run_dir) if name == "tensorboard" else name for name in names]


def start_trackers(acc: Accelerator, cfg: RunConfig, run_dir: Path, *, fresh: bool) -> str:
    """Starts the trackers under the run's project; returns the project name.

    The config goes to every tracker; to TensorBoard only on a fresh start (a resume
    appends to the same folder, which has it already).
    """
    project = tracker_project(cfg, run_dir)
    name = run_dir.name
    init_kwargs = {"wandb": {"name": name}, "mlflow": {"run_name": name}, "comet_ml": {"name": name},
                   "clearml": {"task_name": name}}
    acc.init_trackers(project, config=None, init_kwargs=init_kwargs)
    config = tracker_config(cfg)
    for tracker in acc.trackers:
        if isinstance(tracker, RunTensorBoard) and not fresh:
            continue
        tracker.store_init_configuration(config)
    return project


def log_final(acc: Accelerator, cfg: RunConfig, final_eval: dict[str, Any], step: int) -> None:
    """The final clean/PGD/AutoAttack accuracies (``final/<metric>``) to every tracker."""
    metrics = {k: float(final_eval[k]) for k in FINAL_METRICS if isinstance(final_eval.get(k), (int, float))}
    if not acc.trackers or not metrics:
        return
    others = {f"final/{k}": v for k, v in metrics.items()}
    for tracker in acc.trackers:
        if isinstance(tracker, RunTensorBoard):
            tracker.log_final(tracker_config(cfg), metrics, step)
        else:
            tracker.log(others, step=step)


def tracker_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as ``section.key`` scalars (TensorBoard's hparams take no lists)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config_to_dict(cfg)).items()}
