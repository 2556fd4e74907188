"""What a training run records about its data and origin, for ``model_meta.json``.

The dataset's content fingerprint (:mod:`atzoo.data.fingerprint`) and the run's
provenance (:mod:`atzoo.provenance`); the evaluator copies both into ``eval.json``.
"""

from __future__ import annotations

from typing import Any

from atzoo.config import RunConfig, config_to_dict
from atzoo.data.fingerprint import dataset_identity
from atzoo.provenance import provenance


def run_identity(cfg: RunConfig, bundle: Any) -> dict[str, Any]:
    """``{"dataset_identity": ..., "provenance": ...}`` of a run on ``bundle``.

    The config hash folds in the dataset's content fingerprint rather than its path.
    """
    identity = dataset_identity(bundle)
    record = provenance(seed=cfg.run.seed, config=config_to_dict(cfg), dataset_fingerprint=identity["fingerprint"])
    if "extra" in identity:  # data.extra: what was mixed in, at which share (eval.json copies it)
        record["extra_data"] = {**identity["extra"], "fraction": cfg.data.extra_fraction}
    return {"dataset_identity": identity, "provenance": record}
