"""GPU-hour estimates for ``atzoo reproduce --plan``, from the AR-AT paper's A100 timings.

Two of the paper's measurements anchor every estimate. Its Appendix A.2 gives the time of
a whole AR-AT training run on CIFAR-10 on one A100: about 2 h for ResNet-18 and 10 h for
WRN-34-10. Its Table 19 (in the zoo cards' ``reported_cost``) gives the seconds per
training batch of 128 (ResNet-18) of each method it timed: AT 0.122, TRADES 0.184, LBGAT
0.183, AR-AT 0.140. A run is estimated as epochs x batches x the method's seconds per
batch, times :func:`run_overhead` (Appendix A.2's 2 h over Table 19's pure step time of
the same AR-AT run: data loading, the per-epoch evaluations and the auto-balance pass), times
the architecture's factor: WRN-34-10 5x ResNet-18 (Appendix A.2: 10 h / 2 h). For a method
the paper did not time, AT's time times that method's step-cost ratio to AT measured by
``atzoo bench step-cost --json`` (``benchmarks/results/step_cost_cpu.json`` in a checkout,
or a file given with ``--step-cost``). Imagenette, which the paper did not time, scales by
forward FLOPs (``torch.utils.flop_counter``; see ``docs/reproduction.md``). Training only:
AutoAttack on the whole test set adds time of its own, so the figures are estimates,
printed as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from atzoo.report.cards import load_cards
from atzoo.errors import ConfigError, brief
from atzoo.reproduce.runner import PlannedRun
from atzoo.reproduce.scale import train_size

#: Where a checkout keeps the measured step-cost ratios.
DEFAULT_STEP_COST = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "step_cost_cpu.json"

#: AR-AT paper, Appendix A.2: hours of one AR-AT training run (CIFAR-10, 100 epochs, one A100)
#: on ResNet-18 (the WRN-34-10 figure, 10 h, is declared where wrn34_10 is registered).
APPENDIX_A2_HOURS: dict[str, float] = {"resnet18": 2.0}
#: CIFAR-10 batches of 128 per epoch (50,000 // 128; atzoo drops the last partial batch).
CIFAR_BATCHES = 50_000 // 128

#: The reference of the architecture factor: the CIFAR ResNet-18 at 32 px (the cards' times).
REFERENCE_MODEL = "resnet18"
#: Forward FLOPs relative to the reference for models that declare none where they are
#: registered: timm's, built by prefix (timm's resnet18 at 160 px: 1.85 GFLOP, docs/reproduction.md).
TIMM_FLOP_FACTORS: dict[tuple[str, str], float] = {("timm:resnet18", "imagenette"): 1.67}


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


def run_overhead(paper: dict[str, float]) -> float:
    """Appendix A.2's whole AR-AT run over Table 19's step time of it (2 h / 1.52 h = 1.32):
    what a run spends beyond the training steps (data loading, per-epoch evaluation,
    auto-balance), applied to every method."""
    if "arat" not in paper:
        return 1.0
    return APPENDIX_A2_HOURS["resnet18"] * 3600 / (100 * CIFAR_BATCHES * paper["arat"])


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
    from atzoo.files.safe_read import read_json_file

    payload = read_json_file(file, "--step-cost", error=ConfigError)
    try:
        ratios = {str(m["method"]): m["ratio_to_at"] for m in payload["methods"]}
    except (KeyError, TypeError, IndexError):
        raise ConfigError(f"--step-cost {file} is not the JSON of 'atzoo bench step-cost --json'") from None
    for method, ratio in ratios.items():
        # A negative, zero or NaN time would print negative or NaN GPU-hours as an estimate.
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
            raise ConfigError(f"--step-cost {file}: 'ratio_to_at' of {brief(method)} must be a positive finite "
                              f"number, got {brief(ratio)}")
    return {method: float(ratio) for method, ratio in ratios.items()}


def flop_factor(model: str, dataset: str) -> float | None:
    """Forward FLOPs per image of ``model`` on ``dataset`` relative to the CIFAR ResNet-18:
    the model's declared ``gflops`` (per 32x32 image) over the reference's, times the area
    of the dataset's declared ``image_size`` (32 px when undeclared) over 32x32; None
    when the model declares no FLOPs."""
    from atzoo.registry import DATASETS, MODELS, load_builtins

    load_builtins()
    if model.startswith("timm:"):
        return TIMM_FLOP_FACTORS.get((model, dataset))
    gflops, reference = MODELS.fact(model, "gflops"), MODELS.fact(REFERENCE_MODEL, "gflops")
    if gflops is None or not reference:
        return None
    side = DATASETS.fact(dataset, "image_size", 32)
    return round(gflops / reference * (side / 32) ** 2, 6)


def architecture_factor(model: str, dataset: str) -> tuple[float | None, str]:
    """Training time per image of ``model`` on ``dataset`` relative to the CIFAR ResNet-18,
    and how it was obtained. A paper-measured ratio declared at the model's registration
    (``a100_time_factor``, for 32 px data: WRN-34-10's 5x from Appendix A.2, 10 h / 2 h)
    wins over forward FLOPs (which would say 12x for WRN-34-10: a GPU runs the wide
    convolutions more efficiently than the FLOP count suggests)."""
    from atzoo.registry import DATASETS, MODELS, load_builtins

    load_builtins()
    measured = None if model.startswith("timm:") or model not in MODELS else MODELS.fact(model, "a100_time_factor")
    if measured is not None and dataset in DATASETS and DATASETS.fact(dataset, "image_size", 32) == 32:
        return float(measured), "(paper's A100 time ratio)"
    return flop_factor(model, dataset), "FLOPs"


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
    images = cfg.data.train_subset or train_size(cfg.data.name) or 50_000
    # The paper's times are per batch of 128: a batch of B images costs about B/128 of one.
    batches = images // cfg.data.batch_size * (cfg.data.batch_size / 128)
    factor, how = architecture_factor(cfg.model.name, cfg.data.name)
    per_batch, basis = method_seconds(cfg.method.name, paper, ratios)
    seconds = cfg.optim.epochs * batches * per_batch * run_overhead(paper)
    pretrain_epochs = getattr(cfg.method, "pretrain_epochs", 0) if not getattr(cfg.method, "pretrained", None) else 0
    if pretrain_epochs:
        standard, _ = method_seconds("standard", paper, ratios)
        seconds += pretrain_epochs * batches * standard * run_overhead(paper)
        basis += " + standard pre-training"
    if factor is None:
        return Estimate(seconds, basis + f"; no architecture factor for {cfg.model.name}: ResNet-18's used")
    return Estimate(seconds * factor, basis + (f"; x{factor:g} {how}" if factor != 1.0 else ""))


def estimate_runs(runs: list[PlannedRun], step_cost: str | Path | None = None) -> list[Estimate]:
    """One :class:`Estimate` per planned run."""
    paper = paper_seconds_per_batch()
    ratios = load_step_cost_ratios(step_cost)
    return [estimate_run(r, paper, ratios) for r in runs]
