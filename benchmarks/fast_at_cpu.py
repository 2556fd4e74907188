"""Fast adversarial training against AT at CPU scale: cost, accuracy and the catastrophic-overfitting flag.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/fast_at_cpu.py [RUNS_DIR]

Every run: the embedded 8x8 digits, ``small_cnn``, L-inf eps 0.2 (MNIST-like in scale: at
8/255 every method on these images is as robust as it is accurate), one optimiser for all
(SGD momentum 0.9, wd 5e-4, one-cycle lr up to 0.2 -- the fast-AT papers' shape -- for 15
epochs; Free-AT for 15 / 8 -> 2 epochs of 8 replays, as its paper divides the epochs by m),
the catastrophic-overfitting check on (``eval.co_check=on``: FGSM and PGD-10 accuracy on 256
training images each epoch), and the final evaluation clean + PGD-20 (step eps/4) on the 360
test images. ``fgsm_rs`` runs twice: with the paper's step 1.25 eps and with 2.5 eps (Wong et
al. report catastrophic overfitting for steps above ~1.25 eps, Fig. 2). Training cost is the
process CPU seconds of the training steps (metrics.jsonl ``cost.cpu_s``), also relative to AT.

Writes benchmarks/results/fast_at_cpu/{table.md,results.json}. Runs go to RUNS_DIR
(default /tmp/atzoo-fast-at); finished runs are reused.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "fast_at_cpu"
EPS = 0.2
COMMON = [
    "--dataset", "digits", "--model", "small_cnn", f"attack.eps={EPS}", "optim.lr=0.2", "optim.momentum=0.9",
    "optim.weight_decay=5e-4", "optim.schedule=onecycle", "optim.milestones=[]", "optim.warmup_lr=null",
    "eval.co_check=on", "eval.attacks=[clean,pgd20]", f"eval.pgd_step_size={EPS / 4}", "eval.invariance=false",
    "eval.n_ex=null", "run.trackers=[]", "run.seed=0",
]
#: (label, method, extra overrides)
RUNS: list[tuple[str, str, list[str]]] = [
    ("at (PGD-10)", "at", ["--epochs", "15", f"attack.step_size={EPS / 4}", "attack.steps=10"]),
    ("fgsm_rs (alpha 1.25 eps)", "fgsm_rs", ["--epochs", "15", f"attack.step_size={1.25 * EPS}"]),
    ("fgsm_rs (alpha 2.5 eps)", "fgsm_rs", ["--epochs", "15", f"attack.step_size={2.5 * EPS}"]),
    ("n_fgsm", "n_fgsm", ["--epochs", "15", f"attack.step_size={EPS}"]),
    ("grad_align", "grad_align", ["--epochs", "15", f"attack.step_size={EPS}"]),
    ("free_at (m = 8)", "free_at", ["--epochs", "2", f"attack.step_size={EPS}", "method.replays=8"]),
]


def run_dir(root: Path, label: str) -> Path:
    return root / "".join(c if c.isalnum() else "_" for c in label).strip("_")


def train(root: Path, label: str, method: str, extra: list[str]) -> Path:
    out = run_dir(root, label)
    if (out / "eval.json").is_file():
        return out
    cmd = [sys.executable, "-m", "atzoo", "train", method, *COMMON, *extra, "--out", str(out), "--force"]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    return out


def summarise(label: str, out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in rows if r.get("kind") == "epoch" and not r.get("partial")]
    co = [r for r in rows if r.get("kind") == "co"]
    evaluation = json.loads((out / "eval.json").read_text())
    return {
        "label": label, "run": out.name, "epochs": len(epochs), "steps": epochs[-1]["step"] if epochs else 0,
        "cpu_s": round(sum(float(r["cost"]["cpu_s"]) for r in epochs), 1),
        "clean": evaluation["clean_acc"], "pgd20": evaluation["pgd20_acc"],
        "co_detected": evaluation["catastrophic_overfitting"]["detected"],
        "co_epochs": [e + 1 for e in evaluation["catastrophic_overfitting"]["epochs"]],
        "probe_pgd10": [round(r["pgd_acc"], 1) for r in co], "probe_fgsm": [round(r["fgsm_acc"], 1) for r in co],
    }


def table(results: list[dict]) -> str:
    at_cost = next(r["cpu_s"] for r in results if r["label"].startswith("at "))
    lines = ["| run | epochs | optimizer steps | train CPU s | vs AT | clean % | PGD-20 % | CO flag | "
             "probe PGD-10 % by epoch (first, max, last) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r["probe_pgd10"]
        flag = f"yes (epoch {', '.join(map(str, r['co_epochs']))})" if r["co_detected"] else "no"
        lines.append(f"| {r['label']} | {r['epochs']} | {r['steps']} | {r['cpu_s']:.0f} | {r['cpu_s'] / at_cost:.2f} | "
                     f"{r['clean']:.1f} | {r['pgd20']:.1f} | {flag} | {p[0]:.1f}, {max(p):.1f}, {p[-1]:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/atzoo-fast-at")
    root.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load = os.getloadavg()
    results = [summarise(label, train(root, label, method, extra)) for label, method, extra in RUNS]
    OUT.mkdir(parents=True, exist_ok=True)
    machine = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in machine.splitlines() if line.startswith("Model name")), "?")
    meta = {"started": started, "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu,
            "cores": os.cpu_count(), "load_at_start": [round(x, 2) for x in load], "python": platform.python_version(),
            "eps": EPS, "common": COMMON}
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=2) + "\n")
    (OUT / "table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
