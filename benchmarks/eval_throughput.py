"""PGD-20 images per second of the evaluator's attack (wraps ``atzoo bench eval``).

    python benchmarks/eval_throughput.py                             # CPU, ResNet-18, batch 128
    python benchmarks/eval_throughput.py --device cuda --batch-size 256 --batches 10
    python benchmarks/eval_throughput.py --run runs/arat-resnet18-cifar10-s0 --device cuda

Without ``--json``, the results go to ``benchmarks/results/eval_throughput_<device>.json``.
Any option of ``atzoo bench eval --help`` is accepted.
"""

from __future__ import annotations

import sys

from _bench_cli import run_bench  # benchmarks/ is on sys.path when this script runs

if __name__ == "__main__":
    sys.exit(run_bench("eval", "eval_throughput", sys.argv[1:]))
