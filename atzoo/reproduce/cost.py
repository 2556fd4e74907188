"""GPU-hour estimates for ``atzoo reproduce --plan``, from the paper's A100 timings.

The AR-AT paper timed one training batch (128 CIFAR-10 images, ResNet-18) on one A100
(its Table 19, in the zoo cards' ``reported_cost``): AT 0.122 s, TRADES 0.184, LBGAT
0.183, AR-AT 0.140. For a method the paper did not time, the estimate takes AT's time
times that method's step-cost ratio to AT measured by ``atzoo bench step-cost --json``
(``benchmarks/results/step_cost_cpu.json`` in a checkout, or a file given with
``--step-cost``). Other architectures and image sizes scale by forward FLOPs relative to
the CIFAR ResNet-18 at 32 px, counted with ``torch.utils.flop_counter`` (see
``docs/reproduction.md``). Training only: evaluation (AutoAttack on the whole test set)
adds time of its own, so the figures are estimates, printed as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from atzoo.report.cards import load_cards
from atzoo.errors import ConfigError
from atzoo.reproduce.runner import PlannedRun
from atzoo.reproduce.scale import TRAIN_SIZES

#: Where a checkout keeps the measured step-cost ratios.
DEFAULT_STEP_COST = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "step_cost_cpu.json"

#: Forward FLOPs per image relative to the CIFAR ResNet-18 at 32 px (1.11 GFLOP):
#: WRN-34-10 13.32 GFLOP; timm's resnet18 at 160 px 1.85 GFLOP (docs/reproduction.md).
FLOP_FACTORS: dict[tuple[str, str], float] = {
    ("resnet18", "cifar"): 1.0, ("preact_resnet18", "cifar"): 1.0, ("wrn34_10", "cifar"): 12.0,
    ("timm:resnet18", "imagenette"): 1.67, ("resnet18", "imagenette"): 16.0,  # 128 px crops: (128/32)^2
}


@dataclass(frozen=True)
class Estimate:
    """Estimated A100 training seconds of one run and how the figure was made."""

    seconds: float
    basis: str


def paper_seconds_per_batch() -> dict[str, float]:
    """Method -> seconds per batch of 128 on one A100 (the cards' ``reported_cost``)."""
    seconds: dict[str, float] = {}
    for name, card in load_cards().items():
        cost = (card.meta.get("reported_cost") or {}).get("cifar10-resnet18") or {}
        if "seconds_per_batch" in cost:
            seconds[name] = float(cost["seconds_per_batch"])
    return seconds


def load_step_cost_ratios(path: str | Path | None = None) -> dict[str, float]:
    """Method -> ``ratio_to_at`` from an ``atzoo bench step-cost --json`` file (empty if none).

    Raises:
        ConfigError: an explicitly given file is missing or not step-cost JSON.
    """
    file = Path(path) if path is not None else DEFAULT_STEP_COST
    if not file.is_file():
        if path is not None:
            raise ConfigError(f"--step-cost {file} not found; write one with 'atzoo bench step-cost --json FILE'")
        return {}
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
        return {m["method"]: float(m["ratio_to_at"]) for m in payload["methods"]}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ConfigError(f"--step-cost {file} is not the JSON of 'atzoo bench step-cost --json'") from None


def _family(dataset: str) -> str:
    return "imagenette" if dataset.startswith("imagenette") else "cifar"


def method_seconds(method: str, paper: dict[str, float], ratios: dict[str, float]) -> tuple[float, str]:
    """A100 seconds per batch of ``method`` on CIFAR ResNet-18 and where the number came from."""
    if method in paper:
        return paper[method], "paper"
    if method in ratios and "at" in paper:
        return paper["at"] * ratios[method], f"AT x {ratios[method]:.2f} (bench step-cost)"
    return paper.get("at", 0.122), "AT's time (no step-cost ratio)"


def estimate_run(run: PlannedRun, paper: dict[str, float], ratios: dict[str, float]) -> Estimate:
    """Training seconds of one run on one A100 (ARREST adds its standard pre-training)."""
    cfg = run.config
    images = cfg.data.train_subset or TRAIN_SIZES.get(cfg.data.name, 50_000)
    # The paper's times are per batch of 128: a batch of B images costs about B/128 of one.
    batches = images // cfg.data.batch_size * (cfg.data.batch_size / 128)
    flops = FLOP_FACTORS.get((cfg.model.name, _family(cfg.data.name)))
    per_batch, basis = method_seconds(cfg.method.name, paper, ratios)
    seconds = cfg.optim.epochs * batches * per_batch
    pretrain_epochs = getattr(cfg.method, "pretrain_epochs", 0) if not getattr(cfg.method, "pretrained", None) else 0
    if pretrain_epochs:
        standard, _ = method_seconds("standard", paper, ratios)
        seconds += pretrain_epochs * batches * standard
        basis += " + standard pre-training"
    if flops is None:
        return Estimate(seconds, basis + f"; no FLOP factor for {cfg.model.name}: ResNet-18's used")
    return Estimate(seconds * flops, basis + (f"; x{flops:g} FLOPs" if flops != 1.0 else ""))


def estimate_runs(runs: list[PlannedRun], step_cost: str | Path | None = None) -> list[Estimate]:
    """One :class:`Estimate` per planned run."""
    paper = paper_seconds_per_batch()
    ratios = load_step_cost_ratios(step_cost)
    return [estimate_run(r, paper, ratios) for r in runs]
