"""Does bf16 cost robustness? AT, TRADES and AR-AT trained in fp32, with a bf16 attack, and all-bf16.

    nice -n 10 python benchmarks/precision_parity.py                     # the committed table
    nice -n 10 python benchmarks/precision_parity.py --seeds 0 1 2 --epochs 10 --train-subset 5438

For every method, seed and precision setting, one run of ``atzoo.engine.train`` from the
method's CIFAR-10 ResNet-18 recipe, on the CIFAR-10 subset (``npz:``) with the model,
epochs and training images given here; the recipe's piecewise schedule is scaled to the
epochs (one warm-up epoch at 0.02, then 0.1, x0.1 from 75% of the epochs). The settings:

* ``fp32``        -- ``run.precision=fp32 attack.precision=fp32``
* ``bf16-attack`` -- ``run.precision=fp32 attack.precision=bf16`` (only the training attack)
* ``bf16-all``    -- ``run.precision=bf16 attack.precision=bf16``

Within a method and seed the three runs share the initial weights, the batch order and the
augmentation; only the precision differs. Every run is evaluated in fp32
(``eval.precision=fp32``) on the same test images: clean and PGD-20 on the first
``--test-images``, AutoAttack (standard) on the first ``--aa-images`` of them (with PGD-20
on that subset too). One process, one torch thread; each run's CPU time
(``time.process_time``) and wall time are recorded.

Writes ``benchmarks/results/precision_parity_<cpu|cuda>.jsonl`` (one line per finished run, so an
interrupted benchmark keeps its rows; a rerun skips the runs already there) and prints the
table (``--table`` prints it from the file without training).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
METHODS: tuple[str, ...] = ("at", "trades", "arat")
#: name -> (run.precision, attack.precision)
SETTINGS: dict[str, tuple[str, str]] = {
    "fp32": ("fp32", "fp32"), "bf16-attack": ("fp32", "bf16"), "bf16-all": ("bf16", "bf16"),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-subset", type=int, default=768)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--test-images", type=int, default=512, help="clean and PGD-20 on the first N test images")
    p.add_argument("--aa-images", type=int, default=64, help="AutoAttack on the first N of them")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--out", default=None, help="default: results/precision_parity_<cpu|cuda>.jsonl")
    p.add_argument("--table", action="store_true", help="only print the table of the results file")
    return p.parse_args(argv)


def overrides(args: argparse.Namespace, seed: int, setting: str) -> list[str]:
    """The run's ``section.key=value`` settings on top of the method's recipe."""
    run_precision, attack_precision = SETTINGS[setting]
    milestone = max(1, int(0.75 * args.epochs))
    return [
        f"data.name=npz:{args.data}", f"data.train_subset={args.train_subset}",
        f"data.test_subset={args.test_images}", f"data.batch_size={args.batch_size}", "data.num_workers=0",
        f"model.name={args.model}", f"optim.epochs={args.epochs}", f"optim.milestones=[{milestone}]",
        f"run.seed={seed}", f"run.precision={run_precision}", f"attack.precision={attack_precision}",
        "eval.precision=fp32", f"eval.n_ex={args.aa_images}", "eval.attacks=[clean,pgd20,aa]",
        "eval.invariance=false", "run.trackers=[]", "run.log_every=1000",
    ]


def one_run(args: argparse.Namespace, method: str, seed: int, setting: str) -> dict[str, Any]:
    """Trains and evaluates one run; returns its row (accuracies in percent, times in s)."""
    from atzoo.config import build_config
    from atzoo.engine import train

    recipe = ROOT / "recipes" / f"{method}_cifar10_resnet18.yaml"
    cfg = build_config(recipe, overrides(args, seed, setting))
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="atzoo-parity-") as tmp:
        run_dir = train(cfg, out=Path(tmp) / "run")
        payload = json.loads((run_dir / "eval.json").read_text())
        last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in last if r.get("kind") == "epoch"]
    return {
        "method": method, "seed": seed, "setting": setting, "run_precision": cfg.run.precision,
        "attack_precision": cfg.attack.precision, "eval_precision": payload.get("precision"),
        "clean_acc": payload["clean_acc"], "pgd20_acc": payload["pgd20_acc"],
        "autoattack_acc": payload["autoattack_acc"], "n_test": payload["n_examples"],
        "aa_n": payload.get("aa_n_examples"), "aa_subset_pgd20_acc": payload.get("aa_subset_pgd20_acc"),
        "final_train_loss": epochs[-1].get("loss") if epochs else None,
        "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
        "config": {"model": args.model, "epochs": args.epochs, "train_subset": args.train_subset,
                   "batch_size": args.batch_size, "test_images": args.test_images, "aa_images": args.aa_images},
    }


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: mean (per-seed values) of clean/PGD-20/AA per method and setting, plus CPU time."""
    lines = ["| method | precision (train / attack) | seeds | clean % | PGD-20 % | PGD-20 % (AA images) | "
             "AutoAttack % | CPU s/run |", "|---|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["method"], r["setting"]) for r in rows)
    for method, setting in keys:
        group = [r for r in rows if r["method"] == method and r["setting"] == setting]
        metrics = ("clean_acc", "pgd20_acc", "aa_subset_pgd20_acc", "autoattack_acc")
        cells = [_cell([r[k] for r in group]) for k in metrics]
        train_p, attack_p = SETTINGS[setting]
        lines.append(f"| {method} | {setting} ({train_p} / {attack_p}) | {len(group)} | {' | '.join(cells)} | "
                     f"{statistics.mean(r['cpu_s'] for r in group):.0f} |")
    return "\n".join(lines)


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # where atzoo.engine.train runs
    out = Path(args.out or RESULTS / f"precision_parity_{device}.jsonl")
    if args.table:
        print(table(read_rows(out)))
        return 0
    torch.set_num_threads(1)  # CPU: one thread, so CPU time is comparable between runs
    done = {(r["method"], r["seed"], r["setting"]) for r in read_rows(out)}
    out.parent.mkdir(parents=True, exist_ok=True)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for seed in args.seeds:  # seed by seed, so an interrupted run leaves whole comparisons
        for method in args.methods:
            for setting in args.settings:
                if (method, seed, setting) in done:
                    continue
                row = one_run(args, method, seed, setting)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{method} seed {seed} {setting}: clean {row['clean_acc']:.1f} pgd20 {row['pgd20_acc']:.1f} "
                      f"aa {row['autoattack_acc']:.1f} ({row['cpu_s']:.0f} s CPU, {row['wall_s']:.0f} s wall)",
                      flush=True)
    print(f"total: {time.process_time() - start_cpu:.0f} s CPU, {time.perf_counter() - start_wall:.0f} s wall")
    print(table(read_rows(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
