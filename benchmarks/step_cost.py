"""Training-step cost of every method relative to AT (wraps ``atzoo bench step-cost``).

    python benchmarks/step_cost.py                                   # CPU, ResNet-18, batch 32
    python benchmarks/step_cost.py --device cuda --batch-size 128 --steps 20 --warmup 3
    python benchmarks/step_cost.py --device cuda --batch-size 128 --precision bf16 --channels-last

Without ``--json``, the results go to ``benchmarks/results/step_cost_<device>.json``.
Any option of ``atzoo bench step-cost --help`` is accepted.
"""

from __future__ import annotations

import sys

from _bench_cli import run_bench  # benchmarks/ is on sys.path when this script runs

if __name__ == "__main__":
    sys.exit(run_bench("step-cost", "step_cost", sys.argv[1:]))
