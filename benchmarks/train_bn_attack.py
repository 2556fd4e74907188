"""What a train-mode attack step costs (AR-AT's default), split into its parts.

    nice -n 10 python benchmarks/train_bn_attack.py                  # ResNet-18, batch 32, 1 thread

One attack step is a forward and an input gradient (``torch.autograd.grad`` with respect to
the images only). Rows, interleaved round by round in one process, CPU time per step:

* ``eval``: BatchNorm uses its running statistics (AT's default attack);
* ``train``: BatchNorm uses batch statistics and updates its running statistics at every
  step, as the official AR-AT code (and atzoo's ``attack.bn_mode=train``) does;
* ``train_no_update``: batch statistics, running statistics left alone
  (``track_running_stats=False`` during the step) -- the most that updating the running
  statistics once per batch instead of once per attack step could save.

``train - eval`` is the price of batch statistics (two reductions per BatchNorm in the
forward and two more in its backward, at every attack step); ``train - train_no_update``
is the price of the running-statistics update. Writes
``benchmarks/results/train_bn_attack_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from atzoo.bench.step_cost import environment, paired_ratio
from atzoo.models import create_model

RESULTS = Path(__file__).resolve().parent / "results"


@contextmanager
def no_running_update(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm that normalises with batch statistics but updates nothing."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def attack_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        torch.autograd.grad(loss, x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--json", type=Path, default=RESULTS / "train_bn_attack_cpu.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(args.model, 10, 3)
    x, y = torch.rand(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,))

    def run(row: str) -> None:
        model.train(row != "eval")
        if row == "train_no_update":
            with no_running_update(model):
                attack_step(model, x, y)
        else:
            attack_step(model, x, y)

    rows = ["eval", "train", "train_no_update"]
    cpu: dict[str, list[float]] = {r: [] for r in rows}
    for r in range(args.rounds + 1):  # the first round warms up
        for row in rows[r % 3:] + rows[:r % 3]:
            start = time.process_time()
            run(row)
            if r:
                cpu[row].append(time.process_time() - start)
    median = {r: statistics.median(v) for r, v in cpu.items()}
    result = {
        "benchmark": "train_bn_attack", "model": args.model, "batch_size": args.batch_size, "threads": 1,
        "environment": environment(torch.device("cpu")), "median_cpu_s_per_attack_step": median,
        "cpu_times_s": cpu, "train_over_eval": paired_ratio(cpu["train"], cpu["eval"]),
        "train_over_train_no_update": paired_ratio(cpu["train"], cpu["train_no_update"]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"{row:16s} {median[row]:.4f} s CPU per attack step")
    print(f"train / eval {result['train_over_eval']:.3f}; train / train_no_update "
          f"{result['train_over_train_no_update']:.3f}; wrote {args.json}")


if __name__ == "__main__":
    main()
