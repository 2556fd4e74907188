"""``atzoo eval RUN_DIR_OR_CHECKPOINT``: clean / PGD / AutoAttack evaluation into eval.json.

Defaults come from the run's ``config.yaml`` (its ``eval`` section, the training
attack's norm and eps, the dataset) or, for a bare checkpoint, from ``model_meta.json``.
Several GPUs share the work under ``accelerate launch``; an interrupted AutoAttack
resumes from ``autoattack_state.json`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from atzoo.files.common import MAX_SEED, check_int_range
from atzoo.config import AttackConfig, EvalConfig, RunConfig, coerce, read_config_file
from atzoo.errors import AtzooError, ConfigError, DataError
from atzoo.precision import check_supported

#: Largest ``--seed`` (the training side has the same bound, ``run.seed``).


def eval_command(
    path: Path = typer.Argument(
        ..., help="A run directory, a .safetensors file with its _meta.json beside it, or a model: timm:NAME, "
                  "torchvision:NAME or package.module:factory (with --weights and --dataset)."),
    attacks: Optional[str] = typer.Option(
        None, "--attacks",
        help="Comma-separated: clean, pgd<N> (e.g. pgd20), aa, or any name of `atzoo list attacks`. "
        "Default: the run's eval.attacks."
    ),
    n_ex: Optional[int] = typer.Option(
        None, "--n-ex", help="Evaluate every attack on the first N test images (the same set for all)."
    ),
    aa_version: Optional[str] = typer.Option(None, "--aa-version", help="standard | plus | rand | custom."),
    aa_attacks: Optional[str] = typer.Option(
        None, "--aa-attacks", help="For --aa-version custom: e.g. apgd-ce,apgd-t."
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Evaluation batch size per process."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name (default: the run's)."),
    eps: Optional[str] = typer.Option(None, "--eps", help="Radius, e.g. 8/255 (default: the run's eval.eps, else the dataset's benchmark radius: CIFAR 8/255)."),
    norm: Optional[str] = typer.Option(
        None, "--norm", help="linf | l2 (default: the run's). Another norm without --eps: the dataset's benchmark radius for it."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the PGD random starts and of AutoAttack."),
    precision: Optional[str] = typer.Option(
        None, "--precision",
        help="fp32 | bf16 | fp16: autocast of the attacks (default: the run's eval.precision, fp32)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    weights: Optional[Path] = typer.Option(
        None, "--weights", help="For timm:/torchvision:/module:factory models: a .safetensors or .pt state dict."),
    mean: Optional[str] = typer.Option(
        None, "--mean", help="For such models trained on normalised inputs: per-channel mean, e.g. 0.485,0.456,0.406."),
    std: Optional[str] = typer.Option(None, "--std", help="With --mean: per-channel std."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="For such models: the folder for eval.json (default: the weights file's folder)."),
) -> None:
    """Evaluate a trained model (clean, PGD-20, AutoAttack) and write/update eval.json."""
    from atzoo.eval import evaluate, load_run_model
    from atzoo.eval.evaluator import check_finite_model
    from atzoo.models.external import is_model_spec

    check_int_range(seed, "--seed", 0, MAX_SEED)  # as run.seed; the PGD and AutoAttack generators add offsets to it
    external = is_model_spec(str(path))
    run_dir = _external_out(out, weights) if external else (path if path.is_dir() else path.parent)
    if not external:
        _check_not_training(run_dir)
    cfg, has_config = _run_config(run_dir) if not external else (RunConfig(), False)
    eval_cfg = _eval_config(cfg, attacks=attacks, n_ex=n_ex, aa_version=aa_version, batch_size=batch_size,
                            eps=eps, norm=norm, precision=precision)
    custom = [a.strip() for a in aa_attacks.split(",") if a.strip()] if aa_attacks else None
    _check_inputs(eval_cfg, cfg.attack, custom, dataset or (cfg.data.name if has_config else None))
    if external:
        model, meta, bundle = _external_model(str(path), dataset, weights, mean, std, cfg)
    else:
        model, meta = load_run_model(path)
        name = dataset or meta.get("dataset") or (cfg.data.name if has_config else None)
        if not name:
            raise ConfigError(f"no dataset recorded for {path} (no config.yaml, no 'dataset' in the meta); "
                              "pass --dataset")
        bundle = _dataset(name, cfg, meta)
    accelerator = _accelerator()
    check_supported(eval_cfg.precision, accelerator.device, "--precision")
    model.to(accelerator.device)
    check_finite_model(model, str(path))  # NaN weights or statistics: refused before any file is written
    if external:
        run_dir.mkdir(parents=True, exist_ok=True)
    earlier = len(_previous(run_dir))
    payload = evaluate(model, bundle, eval_cfg, attack_cfg=cfg.attack, accelerator=accelerator,
                       progress=progress, out=run_dir, meta=meta, seed=seed, aa_attacks=custom)
    if accelerator.is_main_process:
        _print_summary(payload, run_dir)
        if len(payload.get("previous") or []) > earlier:
            Console().print("note: the earlier results in eval.json measured other weights, data, threat model or "
                            "images; they are kept under 'previous' and not shown", highlight=False)
    # Leave together and close the process group: a rank that exits while another still
    # talks to it can be aborted by the gloo backend.
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _previous(run_dir: Path) -> list[Any]:
    """The ``previous`` list of the run's eval.json (empty when absent or unreadable)."""
    from atzoo.eval.results import EVAL_FILE, read_eval_json

    try:
        return list(read_eval_json(run_dir / EVAL_FILE).get("previous") or [])
    except AtzooError:
        return []


def _external_out(out: Path | None, weights: Path | None) -> Path:
    """Where eval.json of a timm:/torchvision:/factory model goes."""
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a folder")
        from atzoo.files.paths import check_output_path

        check_output_path(out, "--out", directory=True)
        return out  # created once the model is built and checked (eval_command)
    return weights.parent if weights is not None else Path(".")


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated numbers, e.g. 0.485,0.456,0.406; got {text!r}") from None
    # A NaN (or, for --std, zero) statistic makes every input NaN: chance accuracy, reported as a result.
    if not all(math.isfinite(v) and (flag != "--std" or v > 0) for v in values):
        kind = "finite positive numbers" if flag == "--std" else "finite numbers"
        raise ConfigError(f"{flag} expects {kind}, e.g. 0.229,0.224,0.225; got {text[:80]!r}")
    return values


def _external_model(spec: str, dataset: str | None, weights: Path | None, mean: str | None, std: str | None,
                    cfg: RunConfig) -> tuple[Any, dict[str, Any], Any]:
    """(model, meta, dataset) for ``timm:NAME``, ``torchvision:NAME`` or ``module:factory``."""
    from atzoo.models.external import build_external_model, check_weights_file

    if not dataset:
        raise ConfigError(f"evaluating {spec} needs --dataset (e.g. --dataset cifar10)")
    check_weights_file(weights)
    bundle = _dataset(dataset, cfg, {})
    model = build_external_model(spec, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                                 weights=weights, mean=_floats(mean, "--mean"), std=_floats(std, "--std"))
    meta = {"model": spec, "method": None, "dataset": dataset, "weights_file": str(weights) if weights else None}
    return model, meta, bundle


def _check_not_training(run_dir: Path) -> None:
    """Refuses a run directory that a training process holds (its model is not final)."""
    from atzoo.engine.lock import RunLock
    from atzoo.errors import RunDirError

    holder = RunLock(run_dir).live_holder()
    if holder is not None:
        raise RunDirError(f"run directory {run_dir} is in use by {holder.describe()}; evaluate it once that "
                          "run has finished")


def _run_config(run_dir: Path) -> tuple[RunConfig, bool]:
    """The run's resolved config (and True), or defaults and False for a bare checkpoint."""
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        return read_config_file(config_file), True
    return RunConfig(), False


def _eval_config(cfg: RunConfig, **flags: Any) -> EvalConfig:
    """The run's eval section with the command-line flags applied (types checked)."""
    types = typing.get_type_hints(EvalConfig)
    values = dataclasses.asdict(cfg.eval)
    run_norm = cfg.eval.norm or cfg.attack.norm
    if flags.get("norm") is not None and flags["norm"] != run_norm and flags.get("eps") is None:
        values["eps"] = None  # another norm: its default radius, not the run's number for run_norm
    for key, value in flags.items():
        if key == "eps" and isinstance(value, str):
            value = _number(value)
        if value is not None:
            values[key] = coerce(value, types[key], "--" + key.replace("_", "-"))
    return EvalConfig(**values)


def _number(text: str) -> float | str:
    """``"0.03"`` -> 0.03; fractions such as ``"8/255"`` are left to :func:`coerce`."""
    try:
        return float(text)
    except ValueError:
        return text


def _check_inputs(eval_cfg: EvalConfig, attack_cfg: AttackConfig, custom: list[str] | None,
                  dataset: str | None = None) -> None:
    """Validates everything that can be checked before loading the model."""
    from atzoo.attacks.autoattack import check_autoattack_args
    from atzoo.eval.evaluator import ThreatModel, parse_attacks, parse_threat_models

    attacks = parse_attacks(eval_cfg.attacks)
    threat = ThreatModel.resolve(eval_cfg, attack_cfg, dataset)
    parse_threat_models(eval_cfg.threat_models, threat)
    if eval_cfg.n_ex is not None and eval_cfg.n_ex < 1:
        raise ConfigError(f"--n-ex must be >= 1, got {eval_cfg.n_ex}")
    if eval_cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {eval_cfg.batch_size}")
    if "aa" in attacks:
        check_autoattack_args(threat.norm, threat.eps, eval_cfg.aa_version, custom)


def _dataset(name: str, cfg: RunConfig, meta: dict[str, Any]) -> Any:
    """The dataset, checked against the model's classes and channels."""
    from atzoo.data import create_dataset

    bundle = create_dataset(name, root=cfg.data.root, download=cfg.data.download, test_subset=cfg.data.test_subset)
    for key, have in (("num_classes", bundle.num_classes), ("in_channels", bundle.in_channels)):
        want = meta.get(key)
        if want is not None and want != have:
            raise DataError(f"dataset '{name}' has {key}={have} but the model expects {want}; pass the right --dataset")
    return bundle


def _accelerator() -> Any:
    """The evaluation's Accelerator; ``cpu=True`` without a GPU so that several CPU
    processes (``torchrun``) still form one group and share the test set."""
    from accelerate import Accelerator

    from atzoo.engine.accelerator import accelerator_available

    return Accelerator(cpu=not accelerator_available())


def _fmt(value: Any) -> str:
    return "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))


def attack_rows(payload: dict[str, Any]) -> list[str]:
    """The per-batch attacks measured in ``payload``, in the order evaluated: every entry of
    ``attacks`` (PGD-N and any registered attack) with an accuracy, but clean and AutoAttack
    (which have their own rows)."""
    measured = payload.get("attacks") or {}
    return [name for name in measured if name not in ("clean", "aa") and f"{name}_acc" in payload]


def summary_title(payload: dict[str, Any]) -> str:
    """``method / model / dataset`` of an atzoo run; an outside model (no training method
    recorded) is ``model / dataset`` (never ``? / timm:resnet18``)."""
    parts = [payload.get("method"), payload.get("model"), payload.get("dataset")]
    return " / ".join(str(p) for p in parts if p not in (None, ""))


def _print_summary(payload: dict[str, Any], run_dir: Path) -> None:
    """The current weights' numbers only (``previous`` holds other weights' and is never shown)."""
    console = Console()
    weights = payload.get("weights_fingerprint")
    console.print(f"[bold]{summary_title(payload)}[/] "
                  f"({payload['norm']}, eps {payload['eps']:.4g}: {payload.get('threat_model_source') or 'recorded'}"
                  + (f"; weights {weights})" if weights else ")"), highlight=False)
    table = Table()
    table.add_column("metric", style="bold cyan")
    table.add_column("value", justify="right")
    rows = [("examples", payload.get("n_examples")), ("clean %", payload.get("clean_acc"))]
    rows += [(f"{name.upper()} %", payload[f"{name}_acc"]) for name in attack_rows(payload)]
    aa_n = payload.get("aa_n_examples")
    rows += [("AutoAttack %" + (f" (first {aa_n})" if isinstance(aa_n, int) else ""), payload.get("autoattack_acc")),
             ("worst case over the attacks %", payload.get("worst_case_acc")),
             ("invariance cos", payload.get("invariance_cos"))]
    for name, value in rows:
        table.add_row(name, _fmt(value))
    console.print(table)
    for label, other in (payload.get("other_threat_models") or {}).items():
        console.print(f"also under {label}: clean {_fmt(other.get('clean_acc'))}, PGD-20 {_fmt(other.get('pgd20_acc'))}"
                      f", AutoAttack {_fmt(other.get('autoattack_acc'))}", highlight=False)
    for message in payload.get("flags", {}).get("messages", []):
        console.print(f"[bold yellow]warning:[/] {message}")
    for message in (payload.get("flags", {}).get("explained") or {}).values():
        console.print(f"note: {message}", highlight=False)
    console.print(f"wrote {run_dir / 'eval.json'}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
