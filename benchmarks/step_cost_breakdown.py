"""Where the extra cost over AT comes from: methods with one component switched off.

    python benchmarks/step_cost_breakdown.py                         # CPU, ResNet-18, batch 16
    python benchmarks/step_cost_breakdown.py --device cuda --batch-size 128 --steps 10 --warmup 3

Rows (all in one process, interleaved rounds, ratios to AT as in ``atzoo bench step-cost``):

* ``at_train_bn``: AT with the training attack in train mode (BatchNorm batch statistics),
  the attack mode that AR-AT, Asym-TRADES and inv_naive use by default;
* ``arat_no_split`` / ``arat_no_predictor``: AR-AT without split-BN / without the predictor;
* ``arrest_no_replay``: ARREST without the noisy-replay check (``replay_threshold=-1``);
* ``lbgat6``: LBGAT with beta 6 (the student's clean pass is then trained).

Results go to ``benchmarks/results/step_cost_breakdown_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from atzoo.bench import StepCostSettings, run_step_cost

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("standard", "mart", "inv_naive", "arat", "asym_trades", "arrest", "trades", "lbgat")
VARIANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("at_train_bn", "at", ("attack.bn_mode=train",)),
    ("arat_no_split", "arat", ("method.split_bn=false",)),
    ("arat_no_predictor", "arat", ("method.predictor=false",)),
    ("arrest_no_replay", "arrest", ("method.replay_threshold=-1",)),
    ("lbgat6", "lbgat", ("method.beta=6",)),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="no")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    settings = StepCostSettings(
        model=args.model, batch_size=args.batch_size, device=args.device, steps=args.steps, warmup=args.warmup,
        threads=args.threads if args.device == "cpu" else None, precision=args.precision, methods=METHODS,
        variants=VARIANTS,
    )
    result = run_step_cost(settings)
    out = args.json or RESULTS / f"step_cost_breakdown_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    print(f"{args.model}, batch {args.batch_size}, {args.device}, {torch.get_num_threads()} thread(s), "
          f"median of {args.steps} rounds")
    print(f"{'row':<18} {'s/step':>8} {'x AT':>6} {'x AT cpu':>9} {'bound':>6}")
    for row in result.rows:
        print(f"{row.method:<18} {row.median_s:8.3f} {row.ratio:6.3f} {row.ratio_cpu:9.3f} {row.bound_ratio:6.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
