"""Evaluation: clean / PGD / AutoAttack accuracy, invariance, eval.json, masking flags.

* :func:`evaluate` runs the evaluation and returns (and writes) the ``eval.json`` payload.
* :func:`load_run_model` rebuilds a run's exported model from ``model.safetensors``.
* :func:`masking_flags` and :func:`write_eval_json` handle the payload (:mod:`atzoo.eval.results`).
"""

from atzoo.eval.evaluator import evaluate, load_run_model, parse_attacks
from atzoo.eval.results import EVAL_FILE, masking_flags, read_eval_json, write_eval_json

__all__ = ["EVAL_FILE", "evaluate", "load_run_model", "masking_flags", "parse_attacks", "read_eval_json",
           "write_eval_json"]
