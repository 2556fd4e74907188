"""Does machine load move the leaderboard's cost figures? The demo's leaderboard, quiet and
beside three busy loops.

Trains the demo's methods (AT, TRADES, AR-AT on ``digits`` with the small CNN, the demo's
configuration from :func:`atzoo.commands.demo.demo_config`) twice: once as the machine is, once with
three ``while True: pass`` processes competing for the cores, and builds the leaderboard of
each. One intra-op thread (``OMP_NUM_THREADS=1``), so that the runs record the load-robust
CPU measure (the main thread's CPU time) and the leaderboard may show measured ratios.

The check (exit status 1 when it fails): every cost figure the loaded leaderboard shows is
within 10 % of the quiet one -- the pass-count ``x AT`` (deterministic, so identical) and
every measured ``x AT`` -- or the loaded leaderboard shows no measured figure for that entry.
Results, load averages and the machine go to ``benchmarks/results/cost_under_load.json``.

    python benchmarks/cost_under_load.py [--epochs 2] [--out /tmp/atzoo-cost-under-load]

Evaluation is clean accuracy on 50 images (the cost columns do not depend on it).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: one intra-op thread

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 0.10
BUSY_LOOPS = 3


def cpu_model() -> str:
    """``lscpu``'s model name (the machine the figures were taken on)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


def leaderboard_costs(folder: Path, epochs: int) -> dict[str, dict[str, float | None]]:
    """Trains the demo's methods into ``folder`` and returns each entry's cost figures."""
    import torch

    from atzoo.commands.demo import DEMO_METHODS, demo_config
    from atzoo.engine import train
    from atzoo.report import build_leaderboard, load_runs

    torch.set_num_threads(1)
    runs = []
    for method in DEMO_METHODS:
        cfg = demo_config(method, epochs=epochs, n_ex=50, run_dir=folder / method)
        cfg.eval.attacks = ["clean"]
        runs.append(train(cfg, force=True))
    [group] = build_leaderboard(load_runs(runs)).groups
    return {e.label: {"passes_x_at": e.cost_vs_at, "measured_x_at": e.measured_vs_at,
                      "step_thread_s_per_epoch": e.step_seconds.mean if e.step_seconds else None,
                      "wall_s_per_epoch": e.seconds_per_epoch.mean if e.seconds_per_epoch else None}
            for e in group.measured}


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def phase(folder: Path, epochs: int, load: int) -> dict:
    procs = busy_loops(load)
    start = time.time()
    try:
        costs = leaderboard_costs(folder, epochs)
        alive = all(p.poll() is None for p in procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return {"busy_loops": load, "load_average_end": list(os.getloadavg()), "seconds": time.time() - start,
            "loops_lasted": alive, "costs": costs}


def compare_phases(quiet: dict, loaded: dict) -> list[str]:
    """The figures that moved by more than :data:`TOLERANCE` (empty: the check passes)."""
    problems = []
    for label, figures in loaded["costs"].items():
        before = quiet["costs"].get(label, {})
        for key in ("passes_x_at", "measured_x_at"):
            now, then = figures.get(key), before.get(key)
            if now is None:
                continue  # shows none under load: allowed
            if then is None or abs(now / then - 1) > TOLERANCE:
                problems.append(f"{label} {key}: quiet {then}, loaded {now}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/atzoo-cost-under-load"))
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    record = {"machine": cpu_model(), "cores": os.cpu_count(), "host": platform.node(), "epochs": args.epochs,
              "load_average_start": list(os.getloadavg()),
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    record["quiet"] = phase(args.out / "quiet", args.epochs, 0)
    record["loaded"] = phase(args.out / "loaded", args.epochs, BUSY_LOOPS)
    problems = compare_phases(record["quiet"], record["loaded"])
    record["problems"] = problems
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cost_under_load.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{record['machine']} ({record['cores']} cores), load average at start {record['load_average_start']}")
    for name in ("quiet", "loaded"):
        p = record[name]
        print(f"{name} ({p['busy_loops']} busy loops, load average at end {p['load_average_end']}):")
        for label, figures in p["costs"].items():
            print(f"  {label:8s} " + "  ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in figures.items()))
    print("PASS: every figure shown under load is within 10% of the quiet one" if not problems
          else "FAIL: " + "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
