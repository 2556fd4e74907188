"""The leaderboard's default cost column: the pass-count ratio of two runs' training steps.

Time ratios move with the machine's load and hardware; the number of forward and
backward passes of a training step does not. So ``x AT`` is, by default, the ratio of the
cost units of one training step of a run to those of the AT run beside it, counted as
``atzoo bench step-cost`` counts them (:mod:`atzoo.bench.passes`: a forward pass costs
``F``, an attack's input-gradient backward ``F``, the training backward ``2F``; AT with
PGD-10 is ``23F``): the *bound* the benchmark reports, the ratio a step would take if
every pass cost its FLOPs and nothing else.

The count is made once per configuration: the run's own ``config.yaml`` (its method,
attack steps, model) is built on the CPU and one training step is run on a batch of two
random images of the run's shape (``model_meta.json``), with hooks counting the passes.
The images are at most :data:`COUNT_SIZE` pixels wide (passes do not depend on the
image size; a model that needs its own size is counted at it). The count is
deterministic (no timing is involved) and cached in ``$ATZOO_CACHE/pass_counts.json``
by the configuration's hash. A method that reads pretrained weights (ARREST's ``phi``)
gets freshly initialised ones of the same architecture: the weights do not change the count.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from atzoo.files.cache import add_to_json_cache, read_json_cache
from atzoo.errors import AtzooError
from atzoo.provenance import cache_dir
from atzoo.report.runs import RunRecord
from atzoo.files.safe_read import read_json_file

#: Images in the counting batch (BatchNorm in train mode needs two).
COUNT_BATCH = 2
#: Largest image side of the counting batch (a pass is a pass at any resolution).
COUNT_SIZE = 16
_MEMO: dict[str, float] = {}


def pass_ratio(entry_runs: Sequence[RunRecord], reference_runs: Sequence[RunRecord]) -> tuple[float | None, str]:
    """(ratio of cost units, how it was obtained) or (None, why there is none)."""
    mine, why = entry_units(entry_runs)
    if mine is None:
        return None, why
    ref, ref_why = entry_units(reference_runs)
    if ref is None:
        return None, f"AT: {ref_why}"
    return mine / ref, "pass-count ratio of one training step (FLOP-weighted passes, deterministic)"


def entry_units(runs: Sequence[RunRecord]) -> tuple[float | None, str]:
    """The cost units all of an entry's runs share (they are seeds of one configuration)."""
    units = set()
    for run in runs:
        value, why = run_units(run)
        if value is None:
            return None, why
        units.add(round(value, 6))
    if len(units) > 1:
        return None, "its seeds count different passes per step"
    return (units.pop(), "") if units else (None, "no runs")


def run_units(run: RunRecord) -> tuple[float | None, str]:
    """Cost units of one training step of ``run`` (cached), or (None, the reason)."""
    from atzoo.config import read_config_file
    from atzoo.provenance import config_hash

    config_file = run.path / "config.yaml"
    if not config_file.is_file():
        return None, f"{run.path} has no config.yaml (the configuration whose passes to count)"
    from atzoo import __version__

    key = f"{__version__}:{config_hash(run.config, None)}:{_shape(run.path)}"
    if key in _MEMO:
        return _MEMO[key], ""
    cached = _read_cache().get(key)
    if isinstance(cached, (int, float)) and not isinstance(cached, bool) and cached > 0:
        _MEMO[key] = float(cached)
        return float(cached), ""
    classes, channels, size = _shape(run.path)
    try:
        try:
            units = count_units(read_config_file(config_file), (classes, channels, min(size, COUNT_SIZE)))
        except (RuntimeError, ValueError, AssertionError):
            if size <= COUNT_SIZE:
                raise
            units = count_units(read_config_file(config_file), (classes, channels, size))  # a fixed-size model
    except (AtzooError, ValueError, RuntimeError, TypeError, AssertionError) as exc:
        return None, f"its passes could not be counted ({str(exc).splitlines()[0][:200]})"
    _MEMO[key] = units
    _write_cache(key, units)
    return units, ""


def _shape(run_dir: Path) -> tuple[int, int, int]:
    """(num_classes, in_channels, image_size) from model_meta.json (CIFAR's when absent)."""
    try:
        meta = read_json_file(run_dir / "model_meta.json", "model meta")
    except AtzooError:
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    values = [meta.get("num_classes"), meta.get("in_channels"), meta.get("image_size")]
    defaults = (10, 3, 32)
    return tuple(v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else d  # type: ignore[return-value]
                 for v, d in zip(values, defaults))


def count_units(cfg: Any, shape: tuple[int, int, int]) -> float:
    """Builds the run's method and model on the CPU and counts one step's cost units."""
    import torch
    from torch import nn

    from atzoo.bench.passes import cost_units
    from atzoo.bench.step_cost import Harness, instrumented_step, make_accelerator
    from atzoo.engine.module import TrainingModule
    from atzoo.engine.trainer import build_model, build_optimizer
    from atzoo.methods import create_method

    num_classes, channels, size = shape
    bundle = SimpleNamespace(name="shape", num_classes=num_classes, in_channels=channels, image_size=size,
                             mean=(0.5,) * channels, std=(0.25,) * channels)
    cfg.model.compile, cfg.model.channels_last = False, False
    cfg.run.precision, cfg.attack.precision = "no", "fp32"
    accelerator = make_accelerator("cpu", "no")
    with tempfile.TemporaryDirectory(prefix="atzoo-passes-") as tmp:
        cfg.method = _with_local_pretrained(cfg, bundle, Path(tmp))
        method = create_method(cfg.method.name, cfg)
        torch.manual_seed(0)
        model = method.prepare_model(build_model(cfg, bundle))
        core = TrainingModule(model, nn.ModuleDict(method.build_modules(model)), method)
    optimizer = build_optimizer(core, cfg)
    wrapped, optimizer = accelerator.prepare(core, optimizer)
    core.train()
    harness = Harness(cfg.method.name, method, core, wrapped, optimizer, accelerator, False)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(COUNT_BATCH, channels, size, size, generator=gen)
    y = torch.arange(COUNT_BATCH) % num_classes
    _, passes, _, _ = instrumented_step(harness, x, y, COUNT_BATCH)
    return float(cost_units(passes))


def _with_local_pretrained(cfg: Any, bundle: Any, folder: Path) -> Any:
    """The method config with any ``pretrained`` weights replaced by fresh ones of the model."""
    if not getattr(cfg.method, "pretrained", None) and not hasattr(cfg.method, "pretrain_epochs"):
        return cfg.method
    from safetensors.torch import save_file

    from atzoo.engine.checkpoint import plain_state_dict
    from atzoo.engine.trainer import build_model

    import torch

    torch.manual_seed(0)
    path = folder / "model.safetensors"
    save_file(plain_state_dict(build_model(cfg, bundle)), str(path))
    return dataclasses.replace(cfg.method, pretrained=str(path))


def _cache_file() -> Path:
    return cache_dir() / "pass_counts.json"


def _read_cache() -> dict[str, Any]:
    return read_json_cache(_cache_file(), "pass-count cache")


def _write_cache(key: str, value: float) -> None:
    add_to_json_cache(_cache_file(), "pass-count cache", key, value)
