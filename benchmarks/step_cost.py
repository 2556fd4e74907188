"""Training-step cost of every method relative to AT (wraps ``atzoo bench step-cost``).

    python benchmarks/step_cost.py                                   # CPU, ResNet-18, batch 32
    python benchmarks/step_cost.py --device cuda --batch-size 128 --steps 20 --warmup 3
    python benchmarks/step_cost.py --device cuda --batch-size 128 --precision bf16 --channels-last

Without ``--json``, the results go to ``benchmarks/results/step_cost_<device>.json``.
Any option of ``atzoo bench step-cost --help`` is accepted.
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
        argv = [*argv, "--json", str(RESULTS / f"step_cost_{option(argv, '--device', 'cpu')}.json")]
    return run(["bench", "step-cost", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
