"""``atzoo export RUN --format robustbench``: a run's model as RobustBench expects one.

RobustBench (Croce et al., 2021) loads a model as a definition (an ``nn.Module`` taking
images in [0, 1]) plus a checkpoint ``models/<dataset>/<threat model>/<name>.pt`` holding
``{"state_dict": ...}``; ``robustbench.eval.benchmark(model, dataset=..., threat_model=...,
eps=...)`` then evaluates it. The export writes exactly that::

    OUT/models/cifar10/Linf/<name>.pt      {"state_dict": tensors}  (torch.load(weights_only=True))
    OUT/<name>.py                          get_model() -> nn.Module, inputs in [0, 1]
    OUT/<name>.md                          how to load and benchmark it

The definition of a ``timm:`` model needs only timm (normalisation is a pair of buffers
in front of timm's network); that of an atzoo architecture imports ``atzoo``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from atzoo.config import read_config_file
from atzoo.config.threat import DEFAULT_EPS, ThreatModel
from atzoo.errors import AtzooError, brief
from atzoo.eval.results import read_eval_json
from atzoo.files.paths import check_path_part

#: ``--format`` values.
FORMATS: tuple[str, ...] = ("robustbench",)

_TIMM_DEFINITION = '''"""{name}: exported by atzoo {version} from {run}. Inputs in [0, 1]."""

import timm
import torch
from torch import nn

MEAN = {mean}
STD = {std}


class Model(nn.Module):
    """timm's {timm_name} behind the normalisation it was trained with."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, -1, 1, 1))
        self.net = timm.create_model("{timm_name}", num_classes={num_classes}, in_chans={in_channels})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def get_model() -> nn.Module:
    """The network, randomly initialised; load the checkpoint's "state_dict" into it."""
    return Model()
'''

_ATZOO_DEFINITION = '''"""{name}: exported by atzoo {version} from {run}. Inputs in [0, 1]."""

from torch import nn

from atzoo.models import create_model


def get_model() -> nn.Module:
    """The network, randomly initialised; load the checkpoint's "state_dict" into it."""
    return create_model({model!r}, {num_classes}, {in_channels}, normalize={normalize}, mean={mean}, std={std})
'''

_README = '''# {name} (RobustBench format)

Exported by atzoo {version} from `{run}` ({method}, {model}, {dataset}, {threat} eps={eps}).
The model takes images in [0, 1].

```python
import torch
from {name} import get_model

model = get_model()
model.load_state_dict(torch.load("{checkpoint}", weights_only=True)["state_dict"])
model.eval()
{evaluation}```
'''

#: The datasets RobustBench's ``benchmark`` evaluates on (``robustbench.model_zoo.enums.BenchmarkDataset``).
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100", "imagenet")

_BENCHMARK = '''
from robustbench.eval import benchmark
clean, robust = benchmark(model, dataset="{dataset}", threat_model="{threat}", eps={eps})
'''

_NO_BENCHMARK = '''```

RobustBench's `benchmark` evaluates CIFAR-10, CIFAR-100 and ImageNet only, not `{dataset}`;
evaluate this model with atzoo instead:

```bash
atzoo eval {run} --attacks clean,pgd20,aa
'''


def readme_evaluation(dataset: str, threat: str, eps: str, run: str) -> str:
    """The README's evaluation lines: RobustBench's ``benchmark`` where it can run on the
    dataset, otherwise the ``atzoo eval`` command (never a call RobustBench would refuse)."""
    if dataset in ROBUSTBENCH_DATASETS:
        return _BENCHMARK.format(dataset=dataset, threat=threat, eps=eps)
    return _NO_BENCHMARK.format(dataset=dataset, run=run)


def _threat_model(run_dir: Path) -> ThreatModel:
    """The threat model the run was evaluated under (eval.json), else trained under (config.yaml),
    both read by the bounded readers: a damaged file is one error line naming it."""
    eval_file, config_file = run_dir / "eval.json", run_dir / "config.yaml"
    payload = read_eval_json(eval_file)  # the bounded reader: {} when absent, else checked types
    if payload.get("norm") is not None and payload.get("eps") is not None:
        norm, eps = payload["norm"], payload["eps"]
    elif config_file.is_file():
        attack = read_config_file(config_file).attack
        norm, eps = attack.norm, attack.eps
    else:
        norm, eps = "linf", DEFAULT_EPS["linf"]
    threat = ThreatModel.of(norm, eps, f"threat model of {run_dir}")
    if threat.eps > 1:
        raise AtzooError(f"{run_dir}: the threat model's eps {threat.eps:g} is not in (0, 1] (images are in [0, 1])")
    return threat


def check_export_name(name: str) -> str:
    """``--name``: the module name of the definition (``from NAME import get_model``), so a
    Python identifier, which also keeps every file inside ``--out``.

    Raises:
        AtzooError: not an identifier (``../..``, ``my-model``).
    """
    if not isinstance(name, str) or not name.isidentifier() or len(name) > 100:
        raise AtzooError(f"--name {brief(name)} must be a Python identifier (letters, digits, _), the module "
                         "name of the exported definition, e.g. --name my_model")
    return name


def _dataset_folder(meta: dict[str, Any], run_dir: Path) -> str:
    """The dataset's folder name under ``models/`` (RobustBench's layout), from the meta.

    Raises:
        AtzooError: the recorded name is not one plain folder name (``../..``).
    """
    dataset = str(meta.get("dataset") or "unknown")
    if dataset.startswith("npz:"):  # npz:PATH: the file's stem, as RobustBench names a dataset
        dataset = Path(dataset[4:]).stem
    try:
        return check_path_part(dataset, f"{run_dir / 'model_meta.json'}: 'dataset'")
    except AtzooError as exc:
        raise AtzooError(f"{exc}; the export would leave --out") from None


def _timm_model(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of the timm definition: normalisation buffers, then ``net.*``."""
    channels = int(meta.get("in_channels", 3))
    normalize = bool(meta.get("normalize"))
    mean = meta.get("mean") if normalize else [0.0] * channels
    std = meta.get("std") if normalize else [1.0] * channels
    return {"mean": torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
            "std": torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
            **{f"net.{k}": v for k, v in state.items()}}


def export_robustbench(run: str | Path, out: str | Path, name: str | None = None) -> dict[str, Path]:
    """Writes the RobustBench files of a run (see the module docstring); returns them by role.

    Raises:
        AtzooError: the run cannot be loaded, or ``out`` holds files of another export
            with this name (nothing is overwritten).
    """
    from atzoo import __version__
    from atzoo.files.common import atomic_write_bytes, atomic_write_text
    from atzoo.eval.evaluator import load_run_model
    from atzoo.models.timm_models import portable_module
    from atzoo.files.paths import check_inside, check_output_path

    if name is not None:
        check_export_name(name)
    check_output_path(out, "--out", directory=True)
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    model, meta = load_run_model(run)
    name = name or re.sub(r"\W+", "_", run_dir.resolve().name).strip("_") or "model"
    if not name.isidentifier():
        name = f"model_{name}"
    threat_model = _threat_model(run_dir)
    threat, eps = threat_model.robustbench_name, threat_model.eps
    dataset = _dataset_folder(meta, run_dir)
    out = Path(out)
    files = {"checkpoint": out / "models" / dataset / threat / f"{name}.pt", "definition": out / f"{name}.py",
             "readme": out / f"{name}.md"}
    for role, file in files.items():
        check_inside(out, file, f"the export's {role}")
    existing = [str(p) for p in files.values() if os.path.lexists(p)]  # a link counts as existing
    if existing:
        raise AtzooError(f"{existing[0]} exists; export into another --out folder or with another --name")
    model_name = str(meta["model"])
    values = {"name": name, "version": __version__, "run": run_dir.as_posix(), "num_classes": meta["num_classes"],
              "in_channels": meta.get("in_channels", 3)}
    if model_name.startswith("timm:"):
        state = _timm_model(meta, {k: v.detach().cpu().contiguous() for k, v in portable_module(model).state_dict().items()})
        normalize = bool(meta.get("normalize"))
        definition = _TIMM_DEFINITION.format(
            **values, timm_name=model_name.removeprefix("timm:"),
            mean=list(meta["mean"]) if normalize else [0.0] * int(values["in_channels"]),
            std=list(meta["std"]) if normalize else [1.0] * int(values["in_channels"]))
    else:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        definition = _ATZOO_DEFINITION.format(**values, model=model_name, normalize=bool(meta.get("normalize")),
                                              mean=meta.get("mean"), std=meta.get("std"))
    files["checkpoint"].parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(files["checkpoint"], _torch_bytes({"state_dict": state}))
    atomic_write_text(files["definition"], definition)
    atomic_write_text(files["readme"], _README.format(
        name=name, version=__version__, run=run_dir.as_posix(), method=meta.get("method"), model=model_name,
        dataset=dataset, threat=threat, eps=f"{eps:.6g}",
        checkpoint=files["checkpoint"].relative_to(out).as_posix(),
        evaluation=readme_evaluation(dataset, threat, f"{eps:.6g}", run_dir.as_posix())))
    return files


def _torch_bytes(obj: Any) -> bytes:
    """``torch.save`` into memory (the atomic writer takes bytes)."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def check_format(fmt: str) -> None:
    """Raises AtzooError for an unknown ``--format``."""
    if fmt not in FORMATS:
        raise AtzooError(f"unknown export format '{fmt}'. Valid choices: {', '.join(FORMATS)}")

