"""PGD-20 images per second of the evaluator's attack (wraps ``atzoo bench eval``).

    python benchmarks/eval_throughput.py                             # CPU, ResNet-18, batch 128
    python benchmarks/eval_throughput.py --device cuda --batch-size 256 --batches 10
    python benchmarks/eval_throughput.py --run runs/arat-resnet18-cifar10-s0 --device cuda

Without ``--json``, the results go to ``benchmarks/results/eval_throughput_<device>.json``.
Any option of ``atzoo bench eval --help`` is accepted.
"""

from __future__ import annotations

import sys
from pathlib import Path

from atzoo.cli import run

RESULTS = Path(__file__).resolve().parent / "results"


def option(argv: list[str], name: str, default: str) -> str:
    """The value given to ``name`` (``--name value`` or ``--name=value``), else ``default``."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def main(argv: list[str]) -> int:
    if option(argv, "--json", "") == "":
        argv = [*argv, "--json", str(RESULTS / f"eval_throughput_{option(argv, '--device', 'cpu')}.json")]
    return run(["bench", "eval", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
