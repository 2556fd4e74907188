"""``make demo``: AT, TRADES and AR-AT on the embedded dataset, evaluated and compared.

The demo needs no download and no GPU: it trains three methods briefly on ``digits``
(scikit-learn's 8x8 handwritten digits, shipped inside the package) with the small CNN,
evaluates each (clean, PGD-20 and AutoAttack on a subset), and runs ``atzoo compare``
over the three runs. It finishes in a few minutes on two CPU cores.

Threat model: L-inf with eps 32/255 (step 8/255). The CIFAR default of 8/255 is below
half of one of the digits' 17 grey levels, too small to separate robust from non-robust
training on these images; 32/255 is about two grey levels, comparable in difficulty to
the 0.1-0.3 used on MNIST.

Run ``python -m atzoo.commands.demo --help`` for the options.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console

from atzoo.config import RunConfig, build_config
from atzoo.errors import AtzooError

DEMO_METHODS: tuple[str, ...] = ("at", "trades", "arat")
MARKER = ".atzoo-demo"  # marks a folder as the demo's own, so a re-run may replace it


def demo_config(method: str, *, epochs: int, n_ex: int, run_dir: Path) -> RunConfig:
    """The demo's configuration for one method (every value visible in config.yaml)."""
    overrides = [
        "data.batch_size=64",
        "data.eval_batch_size=360",
        "attack.eps=32/255",
        "attack.step_size=8/255",
        "attack.steps=5",
        "optim.lr=0.05",
        "optim.schedule=cosine",
        "optim.warmup_lr=null",
        "optim.weight_decay=5e-4",
        "eval.attacks=[clean,pgd20,aa]",
        f"eval.n_ex={n_ex}",
        "run.log_every=10",
        "run.trackers=[]",
        "run.keep_checkpoints=1",
    ]
    return build_config(
        None, overrides, method={"name": method}, model={"name": "small_cnn"},
        data={"name": "digits"}, optim={"epochs": epochs}, run={"out": str(run_dir), "seed": 0},
    )


def prepare_demo_dir(out: Path) -> None:
    """Creates ``out``, or empties it when it holds a previous demo (never anything else)."""
    if out.exists():
        if not (out / MARKER).is_file():
            raise AtzooError(
                f"{out} exists and was not made by the demo; choose another folder with --out or remove it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by `python -m atzoo.commands.demo`; re-running the demo replaces this folder\n")


def run_demo(out: Path, *, epochs: int, n_ex: int, methods: tuple[str, ...] = DEMO_METHODS) -> Path:
    """Trains and evaluates ``methods``, then writes the leaderboard; returns its folder."""
    from atzoo.engine import train
    from atzoo.report import compare, rich_leaderboard

    console = Console()
    prepare_demo_dir(out)
    run_dirs = []
    for method in methods:
        start = time.perf_counter()
        console.rule(f"[bold]training {method}[/bold] on digits (small_cnn, {epochs} epochs)")
        run_dir = train(demo_config(method, epochs=epochs, n_ex=n_ex, run_dir=out / method), force=True)
        console.print(f"{method}: done in {time.perf_counter() - start:.0f} s -> {run_dir}")
        run_dirs.append(run_dir)
    board, written = compare(run_dirs, out=out / "leaderboard")
    console.rule("[bold]leaderboard[/bold]")
    console.print(rich_leaderboard(board))
    console.print(f"\nRuns:        {', '.join(str(d) for d in run_dirs)}")
    console.print(f"HTML page:   {written['leaderboard.html']}")
    console.print(f"Trade-off:   {written['tradeoff.png']}")
    console.print(f"Markdown:    {written['leaderboard.md']}")
    return out / "leaderboard"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m atzoo.commands.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_runs"), help="output folder (default demo_runs)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs per method (default 8)")
    parser.add_argument("--n-ex", type=int, default=200, help="AutoAttack test subset (default 200)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m atzoo.commands.demo``; returns the exit code."""
    args = parse_args(argv)
    try:
        run_demo(args.out, epochs=args.epochs, n_ex=args.n_ex)
    except AtzooError as exc:
        print(f"atzoo demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
