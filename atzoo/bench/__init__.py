"""Benchmarks: training cost per method relative to AT, evaluation throughput, data loading.

* :func:`run_step_cost` (:mod:`atzoo.bench.step_cost`): median time of a full training
  step of every method on one model, batch and device, its ratio to AT, the forward and
  backward passes it makes (:mod:`atzoo.bench.passes`) and its memory.
* :func:`run_eval_throughput` (:mod:`atzoo.bench.eval_throughput`): PGD-N images per
  second of the evaluator's attack.
* The data-loader benchmark is :func:`atzoo.data.benchmark.loader_throughput`.

``atzoo bench step-cost | eval | data`` runs them from the command line.
"""

from atzoo.bench.eval_throughput import EvalThroughputSettings, run_eval_throughput
from atzoo.bench.passes import PassCounter, StepPasses, cost_units
from atzoo.bench.step_cost import (
    PAPER_A100_SECONDS,
    REFERENCE_METHOD,
    TARGET_RATIOS,
    MethodCost,
    StepCostResult,
    StepCostSettings,
    run_step_cost,
)

__all__ = [
    "EvalThroughputSettings",
    "MethodCost",
    "PAPER_A100_SECONDS",
    "PassCounter",
    "REFERENCE_METHOD",
    "StepCostResult",
    "StepCostSettings",
    "StepPasses",
    "TARGET_RATIOS",
    "cost_units",
    "run_eval_throughput",
    "run_step_cost",
]
