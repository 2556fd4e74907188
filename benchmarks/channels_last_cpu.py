"""Does channels-last (NHWC) pay on the CPU? AT in NCHW and NHWC, fp32 and bf16, one process.

    nice -n 10 python benchmarks/channels_last_cpu.py                # ResNet-18, batch 32, 1 thread

Rows (interleaved rounds, as ``atzoo bench step-cost``): ``at`` (NCHW) and ``at_nhwc``
(``model.channels_last=true``) with a bf16 attack and training forward, and their fp32
twins ``at@fp32`` and ``at_nhwc@fp32``. Writes ``benchmarks/results/channels_last_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atzoo.bench import StepCostSettings, run_step_cost
from atzoo.bench.step_cost import paired_ratio

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--methods", default="at")
    p.add_argument("--json", type=Path, default=RESULTS / "channels_last_cpu.json")
    args = p.parse_args()
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    settings = StepCostSettings(
        model=args.model, batch_size=args.batch_size, methods=methods, steps=args.steps, warmup=0, threads=1,
        precision="bf16", attack_precision="bf16",
        variants=tuple((f"{m}_nhwc", m, ("model.channels_last=true",)) for m in methods),
    )
    result = run_step_cost(settings)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    rows = {r.method: r for r in result.rows}
    for m in methods:
        for suffix in ("", "@fp32"):
            nchw, nhwc = rows[m + suffix], rows[f"{m}_nhwc{suffix}"]
            speedup = paired_ratio(nchw.cpu_times_s, nhwc.cpu_times_s)
            low, high = min(nchw.cpu_times_s), max(nchw.cpu_times_s)
            print(f"{m}{suffix}: CPU s/step NCHW {low:.3f}-{high:.3f}, NHWC "
                  f"{min(nhwc.cpu_times_s):.3f}-{max(nhwc.cpu_times_s):.3f}; NCHW/NHWC per round (median) {speedup:.3f}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
