"""atzoo's AT and MART steps against plain training loops, interleaved in one process.

    nice -n 10 python benchmarks/plain_loop.py                      # ResNet-18, batch 32, 1 thread
    nice -n 10 python benchmarks/plain_loop.py --rounds 6 --precision bf16

The plain loops are transcriptions of the official training steps -- Madry et al.'s AT as in
the common PyTorch port (and the TRADES repository's PGD), and MART from
github.com/YisenWang/MART (``mart_loss``) -- with nothing around them: no wrapper module, no
Accelerate, no loss-part dictionary. The official code itself is not part of atzoo; these
loops run atzoo's network (same weights, same batch), so the difference between the two
columns is what atzoo's step adds around the same arithmetic.

Each round runs one step of every row, in an order rotated by one per round; the figure is
the median of the process CPU time per step (``time.process_time``, one torch thread), and
the ratio is the median over rounds of atzoo's time over the plain loop's in the same round.
Writes ``benchmarks/results/plain_loop_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo import precision as prec
from atzoo.bench.step_cost import (
    StepCostSettings, build_harness, environment, make_accelerator, make_batch, paired_ratio, shape_bundle, train_step,
)

RESULTS = Path(__file__).resolve().parent / "results"
EPS, STEP, STEPS = 8 / 255, 2 / 255, 10


def plain_pgd(model: nn.Module, x: Tensor, y: Tensor, start: Tensor) -> Tensor:
    """The official PGD loop (eval-mode model, CE, sign step, clip to the ball and [0, 1])."""
    model.eval()
    x_adv = x.detach() + start
    for _ in range(STEPS):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + STEP * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    return x_adv


def plain_at_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, precision: str) -> float:
    with prec.autocast(precision, x.device):
        x_adv = plain_pgd(model, x, y, torch.empty_like(x).uniform_(-EPS, EPS))
        opt.zero_grad()
        loss = F.cross_entropy(model(x_adv), y)
    loss.backward()
    opt.step()
    return loss.item()


def plain_mart_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, precision: str,
                    beta: float = 5.0) -> float:
    """YisenWang/MART ``mart_loss`` (normal start 0.001, CE attack), ResNet-18 beta 5."""
    kl = nn.KLDivLoss(reduction="none")
    with prec.autocast(precision, x.device):
        x_adv = plain_pgd(model, x, y, 0.001 * torch.randn_like(x))
        opt.zero_grad()
        logits = model(x)
        logits_adv = model(x_adv)
        adv_probs = F.softmax(logits_adv, dim=1)
        tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
        new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
        loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
        nat_probs = F.softmax(logits, dim=1)
        true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
        loss_robust = (1.0 / x.shape[0]) * torch.sum(
            torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
        loss = loss_adv + beta * loss_robust
    loss.backward()
    opt.step()
    return loss.item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precision", default="fp32", choices=prec.PRECISIONS)
    p.add_argument("--json", type=Path, default=RESULTS / "plain_loop_cpu.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    settings = StepCostSettings(model=args.model, batch_size=args.batch_size, precision=args.precision, threads=1)
    accelerator = make_accelerator("cpu", "no")
    bundle = shape_bundle(settings)
    x, y = make_batch(settings, bundle, accelerator.device)
    rows: dict[str, Callable[[], float]] = {}
    for method, plain in (("at", plain_at_step), ("mart", plain_mart_step)):
        h = build_harness(method, settings, bundle, accelerator, None)
        rows[f"atzoo {method}"] = (lambda h=h: train_step(h, x, y))
        twin = build_harness(method, settings, bundle, accelerator, None, label=f"plain {method}")
        rows[f"plain {method}"] = (lambda t=twin, f=plain: f(t.core.model, t.optimizer.optimizer, x, y, args.precision))
    names = list(rows)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.warmup + args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.process_time()
            rows[name]()
            if r >= args.warmup:
                cpu[name].append(time.process_time() - start)
        print(f"round {r + 1}: " + ", ".join(f"{n} {cpu[n][-1]:.3f}" for n in names if cpu[n]), flush=True)
    result = {
        "benchmark": "plain_loop", "model": args.model, "batch_size": args.batch_size, "threads": 1,
        "precision": args.precision, "attack": f"PGD-{STEPS}", "environment": environment(accelerator.device),
        "median_cpu_s": {n: statistics.median(v) for n, v in cpu.items()}, "cpu_times_s": cpu,
        "atzoo_over_plain_cpu": {m: paired_ratio(cpu[f"atzoo {m}"], cpu[f"plain {m}"]) for m in ("at", "mart")},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    for m in ("at", "mart"):
        median = result["median_cpu_s"]
        print(f"{m}: atzoo {median[f'atzoo {m}']:.3f} s, plain {median[f'plain {m}']:.3f} s CPU per step; "
              f"atzoo/plain {result['atzoo_over_plain_cpu'][m]:.3f}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
