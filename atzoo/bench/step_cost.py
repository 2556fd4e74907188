"""The training cost of every method relative to AT, measured in one process.

For each method, :func:`run_step_cost` builds the model, the method's modules and the
optimizer exactly as the engine does (``method.prepare_model`` -> ``build_modules`` ->
:class:`~atzoo.engine.module.TrainingModule` -> ``accelerator.prepare``) on one fixed
batch, then times full training steps -- the training attack, one forward of the
training module (all of the method's passes), the backward and the optimizer step --
with the engine's own step, :func:`atzoo.engine.step.train_step`.

Protocol (what makes the ratios comparable):

1. every method starts from the same initial weights (same seed) and sees the same batch;
2. one untimed, instrumented step per method counts the forward/backward passes per
   network and phase (:mod:`atzoo.bench.passes`), the activations saved for backward by
   the training forward and, on CPU, the growth of the process's peak RSS;
3. ``warmup`` untimed rounds, then ``steps`` timed rounds; a round runs one step of
   every method, in an order rotated by one each round, so that a change of machine
   load hits all methods alike;
4. the ratio of a method to AT is the median over rounds of ``t_method / t_AT`` of the
   same round; the median step time is reported too. On CUDA the peak memory of a
   step is ``max_memory_allocated`` during the step minus the memory allocated before it.

Every step is timed twice: wall clock and the process's CPU time
(``time.process_time``). On a CPU shared with other work, the CPU time of a
single-threaded run does not count the time spent waiting for a core, so its ratios
are the stable ones (``ratio_cpu``); on a GPU only the wall clock means anything.

The AR-AT paper's figures (Waseda et al., ICLR 2025; one A100, batch 128, CIFAR-10
ResNet-18): AT 0.122 s (1.00), TRADES 0.184 s (1.51), LBGAT 0.183 s (1.50), AR-AT
0.140 s (1.15) per batch.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from atzoo import precision as prec
from atzoo.bench.passes import PassCounter, StepPasses, cost_units
from atzoo.errors import AtzooError, ConfigError

#: The method every ratio is taken against.
REFERENCE_METHOD = "at"
#: The AR-AT paper's per-batch times (one A100, CIFAR-10 ResNet-18, batch 128), seconds.
PAPER_A100_SECONDS: dict[str, float] = {"at": 0.122, "trades": 0.184, "lbgat": 0.183, "arat": 0.140}
#: Targets for the ratio to AT (same run).
TARGET_RATIOS: dict[str, float] = {
    "arat": 1.12, "asym_trades": 1.12, "mart": 1.12, "trades": 1.20, "lbgat": 1.35, "arrest": 1.10,
}
DEVICES: tuple[str, ...] = ("cpu", "cuda", "mps")
PRECISIONS: tuple[str, ...] = prec.RUN_PRECISIONS
#: Suffix of the float32 rows measured beside a lower-precision run.
FP32_SUFFIX = prec.FP32_TWIN_SUFFIX
FP32_OVERRIDES: tuple[str, ...] = ("run.precision=fp32", "attack.precision=fp32")

Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class StepCostSettings:
    """What :func:`run_step_cost` measures.

    Attributes:
        model: registered architecture (``atzoo list models``).
        batch_size: images per training step.
        methods: registered methods to measure; empty: all of them. AT (the reference)
            is always added.
        device: ``cpu``, ``cuda`` or ``mps``.
        steps: timed rounds (one step of every method per round).
        warmup: untimed rounds after the instrumented step.
        attack_steps: PGD steps of the training attack (``attack.steps``).
        image_size, channels, num_classes: shape of the random batch (CIFAR: 32, 3, 10).
        dataset: take the first ``batch_size`` training images of this dataset instead of
            a random batch (its shape and classes override the three above).
        precision: ``no``/``fp32``, ``bf16`` or ``fp16`` (``run.precision``).
        attack_precision: ``fp32``, ``bf16``, ``fp16`` or ``same`` (``attack.precision``).
            When either is not fp32, every row is measured a second time in fp32
            (``<row>@fp32``) in the same rounds, and each row gets its speed-up over its
            fp32 twin (not with fp16, whose loss scaler belongs to the whole process).
        channels_last: NHWC memory format (``model.channels_last``).
        compile: ``torch.compile`` the network (``model.compile``; the attack too), after the
            instrumented step.
        threads: torch intra-op threads on CPU (``None``: leave torch's setting).
        seed: seed of the weights, the batch and the attacks' random starts.
        overrides: ``section.key=value`` settings applied to every method's config (e.g.
            ``attack.bn_mode=train``); method-specific keys are refused by the other methods.
        variants: extra rows ``(label, method, overrides)``, e.g.
            ``("at_train_bn", "at", ("attack.bn_mode=train",))``, measured with the methods.
    """

    model: str = "resnet18"
    batch_size: int = 32
    methods: tuple[str, ...] = ()
    device: str = "cpu"
    steps: int = 5
    warmup: int = 1
    attack_steps: int = 10
    image_size: int = 32
    channels: int = 3
    num_classes: int = 10
    dataset: str | None = None
    precision: str = "no"
    attack_precision: str = "same"
    channels_last: bool = False
    compile: bool = False
    threads: int | None = None
    seed: int = 0
    overrides: tuple[str, ...] = ()
    variants: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def validate(self) -> None:
        """Raises :class:`ConfigError` (one line) for a value out of range."""
        checks = [
            (self.batch_size >= 2, f"--batch-size must be >= 2 (BatchNorm in train mode), got {self.batch_size}"),
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
            (self.attack_steps >= 1, f"--attack-steps must be >= 1, got {self.attack_steps}"),
            (self.image_size >= 1 and self.channels >= 1, "--image-size and --channels must be >= 1"),
            (self.num_classes >= 2, f"--num-classes must be >= 2, got {self.num_classes}"),
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
            (self.device in DEVICES, f"unknown device '{self.device}'. Valid choices: {', '.join(DEVICES)}"),
            (self.precision in PRECISIONS,
             f"unknown precision '{self.precision}'. Valid choices: {', '.join(PRECISIONS)}"),
            (self.attack_precision in prec.ATTACK_PRECISIONS,
             f"unknown attack precision '{self.attack_precision}'. "
             f"Valid choices: {', '.join(prec.ATTACK_PRECISIONS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def phases(self) -> tuple[str, str]:
        """The concrete (training, attack) precisions."""
        return prec.canonical(self.precision), prec.attack_precision(self.attack_precision, self.precision)

    @property
    def fp32_twins(self) -> bool:
        """Whether every row is also measured in fp32 (a lower precision other than fp16)."""
        return self.phases != ("fp32", "fp32") and "fp16" not in self.phases


def resolve_methods(names: tuple[str, ...] | list[str]) -> list[str]:
    """The methods to measure: the given ones (checked) or every registered one, AT first.

    Raises:
        RegistryError: an unknown method name (the message lists the valid ones).
    """
    from atzoo.registry import METHODS, load_builtins

    load_builtins()
    chosen = list(dict.fromkeys(names)) if names else METHODS.names()
    for name in chosen:
        METHODS.get(name)
    rest = [n for n in chosen if n != REFERENCE_METHOD]
    standard = [n for n in rest if n == "standard"]
    return [REFERENCE_METHOD, *standard, *[n for n in rest if n != "standard"]]


# --------------------------------------------------------------------------- results


@dataclass
class MethodCost:
    """One method's row.

    Attributes:
        times_s: the timed steps, seconds (wall clock), in round order.
        median_s: their median.
        ratio: median over rounds of this method's time over AT's in the same round.
        cpu_times_s: the process CPU time of the timed steps.
        ratio_cpu: like ``ratio``, from the CPU times (the stable figure on a shared CPU
            with one thread; meaningless on a GPU).
        passes: forward/backward passes per network and phase (batch equivalents).
        cost_units: the step in forward-pass units (:func:`atzoo.bench.passes.cost_units`).
        bound_ratio: ``cost_units`` over AT's: the ratio the pass counts predict.
        peak_memory_mb: CUDA: peak allocated during a step above what was allocated
            before it; CPU: growth of the process's peak RSS during the instrumented step.
        activations_mb: tensors saved for backward by the training forward (parameters
            excluded), from the instrumented step.
        state_mb: parameters, buffers and optimizer state of the model and the method's
            modules.
        losses: training loss of every step (instrumented, warm-up, timed).
        precision: ``train <p>, attack <p>`` of this row.
        speedup_cpu: for a lower-precision row, median over rounds of its fp32 twin's
            CPU time over its own (``None`` without a twin); ``speedup`` from wall time.
    """

    method: str
    times_s: list[float]
    median_s: float
    ratio: float | None
    cpu_times_s: list[float]
    ratio_cpu: float | None
    passes: StepPasses
    cost_units: float
    bound_ratio: float | None
    peak_memory_mb: float | None
    activations_mb: float | None
    state_mb: float
    losses: list[float]
    precision: str = "train fp32, attack fp32"
    speedup: float | None = None
    speedup_cpu: float | None = None

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in self.losses)

    def as_dict(self) -> dict[str, Any]:
        p = self.passes
        return {
            "method": self.method, "median_s": self.median_s, "ratio_to_at": self.ratio,
            "ratio_to_at_cpu_time": self.ratio_cpu, "target_ratio": TARGET_RATIOS.get(self.method),
            "bound_ratio": self.bound_ratio, "cost_units": self.cost_units, "times_s": self.times_s,
            "median_cpu_s": statistics.median(self.cpu_times_s), "cpu_times_s": self.cpu_times_s,
            "fwd": p.total("fwd"), "bwd": p.total("bwd"), "passes": p.as_dict(),
            "peak_memory_mb": self.peak_memory_mb, "activations_mb": self.activations_mb,
            "state_mb": self.state_mb, "losses": self.losses, "finite": self.finite,
            "precision": self.precision, "speedup_vs_fp32": self.speedup, "speedup_vs_fp32_cpu_time": self.speedup_cpu,
        }


@dataclass
class StepCostResult:
    """Everything :func:`run_step_cost` measured, and where."""

    settings: StepCostSettings
    rows: list[MethodCost]
    environment: dict[str, Any] = field(default_factory=dict)

    def row(self, method: str) -> MethodCost:
        for row in self.rows:
            if row.method == method:
                return row
        raise KeyError(method)

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "step_cost",
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.settings).items()},
            "environment": self.environment,
            "reference": REFERENCE_METHOD,
            "memory_measure": self.environment.get("memory_measure"),
            "paper_a100_seconds": PAPER_A100_SECONDS,
            "methods": [r.as_dict() for r in self.rows],
        }


# --------------------------------------------------------------------------- building


@dataclass
class Harness:
    """One method's model, modules, optimizer and prepared training module."""

    name: str
    method: Any
    core: nn.Module  # TrainingModule
    wrapped: nn.Module
    optimizer: Any
    accelerator: Any
    channels_last: bool
    run_precision: str = "fp32"
    attack_precision: str = "fp32"


def check_device(device: str) -> None:
    """Raises :class:`ConfigError` unless ``device`` is one of :data:`DEVICES` and present."""
    if device not in DEVICES:
        raise ConfigError(f"unknown device '{device}'. Valid choices: {', '.join(DEVICES)}")
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available[device]:
        raise ConfigError(f"--device {device} is not available on this machine; use --device cpu")


def make_accelerator(device: str, precision: str) -> Any:
    """An Accelerator on ``device`` with ``precision``, as the engine builds it (one process).

    Raises:
        ConfigError: the device is not available or the precision cannot be used on it.
    """
    from atzoo.engine.accelerator import new_accelerator

    check_device(device)
    accelerator = new_accelerator(precision, cpu=device == "cpu", what="--precision")
    if accelerator.device.type != device:
        raise ConfigError(f"--device {device} was asked for but Accelerate chose {accelerator.device}")
    return accelerator


def shape_bundle(settings: StepCostSettings) -> Any:
    """What :func:`atzoo.engine.trainer.build_model` reads from a dataset, for a random batch."""
    return SimpleNamespace(name="random", num_classes=settings.num_classes, in_channels=settings.channels,
                           image_size=settings.image_size, mean=(0.5,) * settings.channels,
                           std=(0.25,) * settings.channels)


def make_batch(settings: StepCostSettings, bundle: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """The fixed batch: the dataset's first training images, or uniform noise and random labels."""
    b = settings.batch_size
    if settings.dataset is not None:
        from atzoo.data import make_train_loader

        loader = make_train_loader(bundle, b, device=device, seed=settings.seed, augment=False)
        return next(iter(loader))
    gen = torch.Generator().manual_seed(settings.seed)
    x = torch.rand(b, bundle.in_channels, bundle.image_size, bundle.image_size, generator=gen)
    y = torch.randint(0, bundle.num_classes, (b,), generator=gen)
    return x.to(device), y.to(device)


def load_bundle(settings: StepCostSettings) -> Any:
    """The dataset named by ``settings.dataset`` (only its first batch is used), else a shape."""
    if settings.dataset is None:
        return shape_bundle(settings)
    from atzoo.data import create_dataset

    bundle = create_dataset(settings.dataset, train_subset=settings.batch_size, test_subset=1)
    if len(bundle.train) < settings.batch_size:
        raise AtzooError(f"dataset '{settings.dataset}' has fewer than {settings.batch_size} training images")
    return bundle


def method_config(name: str, settings: StepCostSettings, bundle: Any, pretrained: Path | None,
                  overrides: tuple[str, ...] = ()) -> Any:
    """The run config of one method: its paper defaults, the benchmark's model/batch/attack.

    Two choices the benchmark makes: LBGAT's teacher has the benchmarked architecture
    (LBGAT's default for ResNet-18), and ARREST fine-tunes from ``pretrained`` (the
    common initial weights), so no standard model is trained first.
    """
    from atzoo.config import build_config

    method: dict[str, Any] = {"name": name}
    if name == "lbgat":
        method["teacher"] = settings.model
    if name == "arrest":
        method["pretrained"] = str(pretrained)
    try:
        return _config(build_config, name, method, settings, bundle, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _config(build_config: Any, name: str, method: dict[str, Any], settings: StepCostSettings, bundle: Any,
            overrides: tuple[str, ...]) -> Any:
    from atzoo.registry import METHODS

    # A single-step method (fgsm_rs, n_fgsm, grad_align, free_at) keeps its one step: --attack-steps is AT's.
    steps = 1 if METHODS.get(name).single_step else settings.attack_steps
    return build_config(
        None, [f"attack.steps={steps}", "run.trackers=[]", *settings.overrides, *overrides],
        data={"batch_size": settings.batch_size},
        model={"name": settings.model, "num_classes": bundle.num_classes, "in_channels": bundle.in_channels,
               "channels_last": settings.channels_last, "compile": settings.compile},
        method=method,
        run={"precision": settings.precision, "seed": settings.seed},
        attack={"precision": settings.attack_precision},
    )


def initial_weights(settings: StepCostSettings, bundle: Any, folder: Path) -> Path:
    """Saves the common initial weights as ``folder/model.safetensors`` (ARREST's phi)."""
    from safetensors.torch import save_file

    from atzoo.config import build_config
    from atzoo.engine.checkpoint import plain_state_dict
    from atzoo.engine.trainer import build_model

    cfg = build_config(None, [], model={"name": settings.model}, method={"name": "standard"})
    torch.manual_seed(settings.seed)
    model = build_model(cfg, bundle)
    path = folder / "model.safetensors"
    save_file(plain_state_dict(model), str(path))
    return path


def build_harness(name: str, settings: StepCostSettings, bundle: Any, accelerator: Any,
                  pretrained: Path | None, *, label: str | None = None, overrides: tuple[str, ...] = ()) -> Harness:
    """Model, method modules, optimizer and prepared training module, as the engine builds them.

    Args:
        name: the registered method.
        label: the row's name (default ``name``); ``overrides``: this row's extra settings.
    """
    from atzoo.engine.module import TrainingModule
    from atzoo.engine.trainer import build_model, build_optimizer
    from atzoo.methods import create_method

    cfg = method_config(name, settings, bundle, pretrained, overrides)
    method = create_method(name, cfg)
    torch.manual_seed(settings.seed)  # the same initial weights for every method
    model = method.prepare_model(build_model(cfg, bundle))
    core = TrainingModule(model, nn.ModuleDict(method.build_modules(model)), method)
    if cfg.model.channels_last:  # --channels-last, or a row's model.channels_last=true
        core.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(core, cfg)
    wrapped, optimizer = accelerator.prepare(core, optimizer)
    core.train()
    return Harness(label or name, method, core, wrapped, optimizer, accelerator, cfg.model.channels_last,
                   prec.canonical(cfg.run.precision), cfg.attack.precision)


# --------------------------------------------------------------------------- one step


def train_step(h: Harness, x: Tensor, y: Tensor, *, counter: PassCounter | None = None,
               forward_context: Any = None) -> float:
    """One training step, the engine's own (:func:`atzoo.engine.step.train_step`); returns the loss.

    Reading the loss back (a host copy) waits for all queued device work, so wall-clock
    timing of this call covers the whole step.

    Args:
        counter: when given, its phase is set to ``attack`` and then ``loss``.
        forward_context: a context manager around the training forward (instrumentation).
    """
    from atzoo.engine.step import StepRunner
    from atzoo.engine.step import train_step as engine_step

    runner = StepRunner(h.accelerator, h.core, h.wrapped, h.optimizer, channels_last=h.channels_last,
                        run_precision=h.run_precision, attack_precision=h.attack_precision)
    phase = (lambda name: setattr(counter, "phase", name)) if counter is not None else None
    return float(engine_step(runner, x, y, phase=phase, forward_context=forward_context).loss.detach())


# --------------------------------------------------------------------------- memory


def peak_rss_mb() -> float | None:
    """The process's peak resident set size so far (``getrusage``), MB; None where unavailable."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class SavedActivations:
    """Context manager recording the storages autograd saves for backward inside it.

    Storages in ``exclude`` (the parameters and buffers) are left out, and a storage saved
    by several operations counts once. ``megabytes`` is the total after the block.
    """

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.seen: dict[int, int] = {}
        self._hooks: Any = None

    def _pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.exclude:
            self.seen[ptr] = max(self.seen.get(ptr, 0), storage.nbytes())
        return t

    def __enter__(self) -> "SavedActivations":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    @property
    def megabytes(self) -> float:
        return sum(self.seen.values()) / 2**20


def state_megabytes(h: Harness) -> float:
    """Parameters, buffers and optimizer state of one method, MB."""
    tensors = list(h.core.parameters()) + list(h.core.buffers())
    for state in h.optimizer.state_dict()["state"].values():
        tensors += [v for v in state.values() if isinstance(v, Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _networks(h: Harness) -> dict[str, nn.Module]:
    """The full networks whose passes are counted: the model, a teacher, a frozen reference."""
    nets = {"model": h.core.model}
    for key, module in h.core.method_modules.items():
        if any(isinstance(m, nn.Conv2d) for m in module.modules()):
            nets[key] = module
    return nets


# --------------------------------------------------------------------------- the benchmark


def instrumented_step(
    h: Harness, x: Tensor, y: Tensor, batch_size: int
) -> tuple[float, StepPasses, float, float | None]:
    """The untimed first step: ``(loss, passes, activation MB, peak-RSS growth MB)``."""
    counter = PassCounter(_networks(h), batch_size)
    saved = SavedActivations({t.untyped_storage().data_ptr() for t in [*h.core.parameters(), *h.core.buffers()]})
    rss_before = peak_rss_mb()
    with counter.counting():
        loss = train_step(h, x, y, counter=counter, forward_context=saved)
    rss_after = peak_rss_mb()
    growth = rss_after - rss_before if rss_before is not None and rss_after is not None else None
    return loss, counter.result(), saved.megabytes, growth


def _timed_step(h: Harness, x: Tensor, y: Tensor, device: torch.device) -> tuple[float, float, float, float | None]:
    """``(wall seconds, CPU seconds, loss, CUDA peak MB above the memory allocated before the step)``."""
    before = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = train_step(h, x, y)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if device.type == "cuda" else None
    return seconds, cpu_seconds, loss, peak


def environment(device: torch.device) -> dict[str, Any]:
    """Where the figures were taken: device, versions, threads, load."""
    from atzoo import __version__

    from atzoo.provenance import device_name

    name = device_name(device)  # the CPU model or GPU name, as training runs record it
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "device": str(device), "device_name": name, "host": platform.node(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "atzoo_version": __version__, "load_average_start": list(load) if load else None,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "memory_measure": ("cuda max_memory_allocated during a step minus memory allocated before it"
                           if device.type == "cuda" else
                           "growth of the process's peak RSS (getrusage ru_maxrss) during the method's first "
                           "step; the high-water mark of the whole process, so a method that needs no more "
                           "memory than the methods measured before it shows about 0"),
    }


def run_step_cost(settings: StepCostSettings, *, progress: Progress | None = None) -> StepCostResult:
    """Measures every method's training step (see the module docstring).

    Args:
        settings: model, batch, methods, device, rounds, switches.
        progress: called as ``progress(description, done, total)`` after every step.

    Raises:
        ConfigError / RegistryError / DataError: bad settings, before anything is built.
    """
    settings.validate()
    specs = [(n, n, ()) for n in resolve_methods(settings.methods)] + check_variants(settings.variants)
    if settings.fp32_twins:
        specs += [(label + FP32_SUFFIX, m, (*o, *FP32_OVERRIDES)) for label, m, o in specs]
    names = [label for label, _, _ in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"variant labels must differ from each other and from the methods: {names}")
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    from atzoo.registry import MODELS

    MODELS.get(settings.model)
    # Only fp16 needs Accelerate's own mixed precision (its loss scaler); bf16 and fp32 rows
    # get their autocast per row in the step, so they can share the process.
    accelerator = make_accelerator(settings.device, "fp16" if "fp16" in settings.phases else "no")
    device = accelerator.device
    for option, value in zip(("--precision", "--attack-precision"), settings.phases):
        prec.check_supported(value, device, option)
    bundle = load_bundle(settings)
    x, y = make_batch(settings, bundle, device)
    env = environment(device)
    total = len(names) * (1 + settings.warmup + settings.steps)
    done = 0

    def tick(text: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(text, done, total)

    with tempfile.TemporaryDirectory(prefix="atzoo-bench-") as tmp:
        phi = initial_weights(settings, bundle, Path(tmp)) if any(m == "arrest" for _, m, _ in specs) else None
        harnesses = [build_harness(m, settings, bundle, accelerator, phi, label=label, overrides=tuple(o))
                     for label, m, o in specs]

    first: dict[str, tuple[StepPasses, float | None, float | None]] = {}
    losses: dict[str, list[float]] = {n: [] for n in names}
    for h in harnesses:  # instrumented, in order (peak-RSS growth is a process-wide high-water mark)
        torch.manual_seed(settings.seed)
        loss, passes, activations, growth = instrumented_step(h, x, y, settings.batch_size)
        first[h.name] = (passes, activations, growth)
        losses[h.name].append(loss)
        tick(f"{h.name}: counted passes")
    if settings.compile:
        for h in harnesses:
            h.core.model.compile()  # as the engine does with model.compile (attack included)
    for r in range(settings.warmup):
        for h in _rotated(harnesses, r):
            losses[h.name].append(train_step(h, x, y))
            tick(f"warm-up {r + 1}/{settings.warmup}: {h.name}")
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu_times: dict[str, list[float]] = {n: [] for n in names}
    cuda_peak: dict[str, float] = {}
    for r in range(settings.steps):
        for h in _rotated(harnesses, r):
            seconds, cpu_seconds, loss, peak = _timed_step(h, x, y, device)
            times[h.name].append(seconds)
            cpu_times[h.name].append(cpu_seconds)
            losses[h.name].append(loss)
            if peak is not None:
                cuda_peak[h.name] = max(cuda_peak.get(h.name, 0.0), peak)
            tick(f"round {r + 1}/{settings.steps}: {h.name}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["load_average_end"] = list(load) if load else None

    rows = []
    for h in harnesses:
        passes, activations, growth = first[h.name]
        units = cost_units(passes)
        # fp32 twins are compared with AT's fp32 twin, the others with AT in the run's precision.
        ref = REFERENCE_METHOD + (FP32_SUFFIX if h.name.endswith(FP32_SUFFIX) else "")
        ref_units = cost_units(first[ref][0])
        twin = h.name + FP32_SUFFIX if h.name + FP32_SUFFIX in times else None
        rows.append(MethodCost(
            method=h.name, times_s=times[h.name], median_s=statistics.median(times[h.name]),
            ratio=paired_ratio(times[h.name], times[ref]), cpu_times_s=cpu_times[h.name],
            ratio_cpu=paired_ratio(cpu_times[h.name], cpu_times[ref]), passes=passes, cost_units=units,
            bound_ratio=units / ref_units if ref_units else None,
            peak_memory_mb=cuda_peak.get(h.name) if device.type == "cuda" else growth,
            activations_mb=activations, state_mb=state_megabytes(h), losses=losses[h.name],
            precision=f"train {h.run_precision}, attack {h.attack_precision}",
            speedup=paired_ratio(times[twin], times[h.name]) if twin else None,
            speedup_cpu=paired_ratio(cpu_times[twin], cpu_times[h.name]) if twin else None,
        ))
    return StepCostResult(settings, rows, env)


def check_variants(variants: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(label, method, overrides)`` rows with registered methods (RegistryError otherwise)."""
    from atzoo.registry import METHODS

    checked = []
    for label, method, overrides in variants:
        METHODS.get(method)
        checked.append((str(label), method, tuple(overrides)))
    return checked


def paired_ratio(times: list[float], reference: list[float]) -> float | None:
    """Median over rounds of ``times[r] / reference[r]`` (None if a reference time is 0)."""
    if not times or any(t <= 0 for t in reference):
        return None
    return statistics.median(t / a for t, a in zip(times, reference))


def _rotated(items: list[Harness], shift: int) -> list[Harness]:
    k = shift % len(items)
    return items[k:] + items[:k]


__all__ = [
    "Harness", "MethodCost", "PAPER_A100_SECONDS", "REFERENCE_METHOD", "StepCostResult", "StepCostSettings",
    "TARGET_RATIOS", "build_harness", "make_accelerator", "resolve_methods", "run_step_cost", "train_step",
]
