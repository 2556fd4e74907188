"""Images per second of the evaluator's PGD attack.

Per batch this runs what :func:`atzoo.eval.evaluate` runs for its ``pgd<N>`` entry:
PGD-N on the cross-entropy from a uniform random start with the evaluator's threat
model (:class:`atzoo.eval.evaluator.ThreatModel`: step 2/255 for L-inf, eps/4 for L2)
and the model in eval mode, then one forward of the adversarial batch. That is ``N``
forward + input-gradient passes and one forward per batch.

The model is a run's exported model (``--run``) or a freshly initialised architecture
(the weights do not change the cost of a pass).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from atzoo.errors import ConfigError

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EvalThroughputSettings:
    """What :func:`run_eval_throughput` measures.

    Attributes:
        model: registered architecture (ignored with ``run``).
        run: a run directory or ``model.safetensors`` to load instead.
        batch_size: images per batch (the evaluator's ``eval.batch_size``).
        steps: PGD steps (20: PGD-20).
        batches: timed batches.
        warmup: untimed batches first.
        device: ``cpu``, ``cuda`` or ``mps``.
        precision: ``no``, ``bf16`` or ``fp16`` (Accelerate autocast around the attack).
        channels_last: NHWC model and inputs.
        norm, eps: threat model (``None`` eps: 8/255 for L-inf, 0.5 for L2).
        image_size, channels, num_classes: shape of the random batch (without ``run``).
        threads: torch intra-op threads (``None``: unchanged).
        seed: seed of the batch, the weights and the random starts.
    """

    model: str = "resnet18"
    run: str | None = None
    batch_size: int = 128
    steps: int = 20
    batches: int = 3
    warmup: int = 1
    device: str = "cpu"
    precision: str = "no"
    channels_last: bool = False
    norm: str = "linf"
    eps: float | None = None
    image_size: int = 32
    channels: int = 3
    num_classes: int = 10
    threads: int | None = None
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.batches >= 1, f"--batches must be >= 1, got {self.batches}"),
            (self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
            (self.norm in ("linf", "l2"), f"unknown norm '{self.norm}'. Valid choices: linf, l2"),
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def load_model(settings: EvalThroughputSettings) -> tuple[nn.Module, int, int, int]:
    """``(model in eval mode, num_classes, in_channels, image_size)``."""
    if settings.run is not None:
        from atzoo.eval import load_run_model

        model, meta = load_run_model(Path(settings.run))
        return (model, int(meta["num_classes"]), int(meta.get("in_channels", 3)),
                int(meta.get("image_size", settings.image_size)))
    from atzoo.models import create_model

    torch.manual_seed(settings.seed)
    model = create_model(settings.model, settings.num_classes, settings.channels)
    return model.eval(), settings.num_classes, settings.channels, settings.image_size


def run_eval_throughput(settings: EvalThroughputSettings, *, progress: Progress | None = None) -> dict[str, Any]:
    """PGD-``steps`` images per second of the evaluator's attack (see the module docstring).

    Returns:
        ``{"images_per_s", "median_batch_s", "batch_times_s", "passes": {"fwd", "bwd"},
        "settings", "environment", ...}``.
    """
    from atzoo.attacks import attack_mode, pgd
    from atzoo.bench.step_cost import environment, make_accelerator
    from atzoo.config import AttackConfig, EvalConfig
    from atzoo.eval.evaluator import ThreatModel

    settings.validate()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    eps = settings.eps if settings.eps is not None else (8 / 255 if settings.norm == "linf" else 0.5)
    threat = ThreatModel.resolve(EvalConfig(norm=settings.norm, eps=eps), AttackConfig(norm=settings.norm, eps=eps))
    accelerator = make_accelerator(settings.device, settings.precision)
    device = accelerator.device
    model, classes, channels, size = load_model(settings)
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(settings.seed)
    x = torch.rand(settings.batch_size, channels, size, size, generator=gen).to(device)
    y = torch.randint(0, classes, (settings.batch_size,), generator=gen).to(device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    attack_gen = torch.Generator(device=device).manual_seed(settings.seed)

    def one_batch() -> float:
        start = time.perf_counter()
        with accelerator.autocast(), attack_mode(model, "eval", None) as net:
            x_adv = pgd(net, x, y, **threat.pgd_settings(settings.steps), mode="eval", generator=attack_gen)
            with torch.no_grad():
                correct = net(x_adv).argmax(dim=1).eq(y).sum()
        correct.item()  # waits for the device
        return time.perf_counter() - start

    total = settings.warmup + settings.batches
    times: list[float] = []
    for i in range(total):
        seconds = one_batch()
        if i >= settings.warmup:
            times.append(seconds)
        if progress is not None:
            progress("warm-up" if i < settings.warmup else "timed", i + 1, total)
    median = statistics.median(times)
    return {
        "benchmark": "eval_throughput",
        "settings": asdict(settings),
        "threat_model": {"norm": threat.norm, "eps": threat.eps, "step_size": threat.step_size},
        "environment": {k: v for k, v in environment(device).items() if k != "memory_measure"},
        "images_per_s": settings.batch_size / median,
        "median_batch_s": median,
        "batch_times_s": times,
        "passes": {"fwd": settings.steps + 1, "bwd": settings.steps},
    }

