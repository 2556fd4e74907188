"""Typed run configuration: dataclass sections, YAML recipes and ``a.b=value`` overrides.

A :class:`RunConfig` nests one dataclass per section (``data``, ``model``, ``attack``,
``optim``, ``method``, ``eval``, ``run``, ``averaging``, ``diagnostics``). A YAML recipe
maps one to one onto it; unknown keys and values of the wrong type are
:class:`~atzoo.errors.ConfigError` naming the key and the expected type.

The ``method`` section is special: its schema is the frozen config dataclass that the
selected method declares (``Method.config_class``), so ``method.gamma`` exists for AR-AT
but is an unknown key for AT. ``method.name`` selects it.

Resolution order (later wins): dataclass defaults -> the method's paper defaults
(``Method.paper_defaults``: its training attack and optimiser) -> recipe file ->
command-line flags -> ``section.key=value`` overrides; :func:`resolve_config` records the
source of every value and rescales the schedule when ``optim.epochs`` is changed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from atzoo.files.common import load_yaml
from atzoo.errors import ConfigError, brief
from atzoo.files.safe_read import read_yaml_file

# --------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    """Dataset and loader settings."""

    name: str = "digits"
    root: Optional[str] = None  # folder holding downloaded data; env ATZOO_DATA otherwise
    download: bool = True  # torchvision download when the files are missing
    batch_size: int = 128  # global batch (split across processes)
    eval_batch_size: int = 256
    augment: bool = True  # random crop (pad 4) + horizontal flip, as in the papers
    num_workers: int = 2  # only for datasets too large to hold in memory
    train_subset: Optional[int] = None  # first N training images (debugging, demo)
    test_subset: Optional[int] = None  # first N test images
    val_size: Optional[int] = None  # held-out training images for eval.val_every; null: min(1000, N/10)
    # Extra training images read from disk by rows (atzoo/data/extra.py): npz:FILE.npz
    # (uncompressed, arrays image + label) or npy:FOLDER (image.npy + label.npy, or shards).
    extra: Optional[str] = None
    # Share of every batch drawn from data.extra: 0.7 in Gowal et al. 2021 and Wang et al.
    # 2023 (--unsup-fraction 0.7), 0.5 in Carmon et al. 2019. Unused without data.extra.
    extra_fraction: float = 0.7


@dataclass
class ModelConfig:
    """Architecture settings; ``num_classes`` and ``in_channels`` default to the dataset's."""

    name: str = "small_cnn"
    num_classes: Optional[int] = None
    in_channels: Optional[int] = None
    normalize: bool = False  # mean/std layer inside the model (off, as in the official code)
    pretrained: bool = False  # timm:NAME only: start from timm's pretrained weights
    channels_last: bool = False  # NHWC memory format (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the training forward


@dataclass
class AttackConfig:
    """The *training* attack. ``None`` fields take the method's default (see its card).

    ``name`` is a registered per-batch attack (``atzoo list attacks``); it receives the
    settings below that it takes (see :mod:`atzoo.attacks.registered`).
    """

    name: str = "pgd"
    norm: Literal["linf", "l2"] = "linf"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: Optional[Literal["uniform", "normal", "none"]] = None
    start_std: float = 0.001  # std of the normal start (TRADES, MART)
    bn_mode: Optional[Literal["eval", "train"]] = None  # model mode during the attack
    # Autocast precision of the training attack; "same" follows run.precision (resolved
    # to a concrete value, so config.yaml records what ran). See atzoo/precision.py.
    precision: Literal["fp32", "bf16", "fp16", "same"] = "same"


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (SGD, as every paper here uses)."""

    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["piecewise", "cosine", "onecycle", "constant"] = "piecewise"
    milestones: list[int] = field(default_factory=lambda: [75, 90])
    lr_decay: float = 0.1
    warmup_epochs: float = 1.0  # piecewise: epochs run at warmup_lr before lr (fractions allowed)
    warmup_lr: Optional[float] = 0.02  # None: no warm-up
    grad_clip: Optional[float] = None
    grad_accum: int = 1
    # Label smoothing of the classification cross-entropy (torch's label_smoothing: targets
    # (1 - s) one-hot + s / K). Wang et al. 2023: 0.1 on TRADES's clean CE (--ls 0.1).
    # Methods that take it declare Method.takes_label_smoothing (at, trades and their AWP
    # forms, standard); the others refuse s > 0.
    label_smoothing: float = 0.0


@dataclass
class EvalConfig:
    """Evaluation at the end of training and by ``atzoo eval``."""

    attacks: list[str] = field(default_factory=lambda: ["clean", "pgd20", "aa"])
    norm: Optional[Literal["linf", "l2"]] = None  # None: the training attack's
    eps: Optional[float] = None  # None: the dataset's benchmark radius (CIFAR L-inf 8/255), not the training eps
    threat_models: list[str] = field(default_factory=list)  # more, as NORM:EPS (e.g. linf:0.031), kept apart
    pgd_step_size: Optional[float] = None  # None: 2/255 for L-inf, eps/4 for L2
    n_ex: Optional[int] = 1000  # the first N test images, for every attack; None = the whole test set
    aa_version: Literal["standard", "plus", "rand", "custom"] = "standard"
    batch_size: int = 256
    invariance: bool = True  # mean cos(clean, PGD-20) penultimate features
    val_every: int = 0  # epochs between validations on data.val_size held-out training images; 0 = off
    val_attack: str = "pgd10"  # the robust accuracy of the validation (pgd<N>)
    weights: Literal["last", "best"] = "last"  # exported and evaluated: last epoch or best validation
    # Catastrophic-overfitting check each epoch (FGSM and PGD accuracy, atzoo/engine/overfit.py): auto = on for
    # single-step methods (fgsm_rs, n_fgsm, grad_align, free_at) and whenever eval.val_every is on
    co_check: Literal["auto", "on", "off"] = "auto"
    on_co: Literal["warn", "stop", "rollback"] = "warn"  # when flagged: log it; stop training; stop + best weights
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast of the evaluation attacks


@dataclass
class AveragingConfig:
    """Weight averaging with ``torch.optim.swa_utils`` (AR-AT+SWA)."""

    swa: bool = False
    swa_start_epoch: int = 75  # 0-based; the official ARAT+SWA scripts: --swa_start 76 (1-based, swa_start <= epoch)
    swa_every_steps: int = 500
    ema: bool = False
    ema_decay: float = 0.999
    # The EMA of Gowal et al. 2021 / Wang et al. 2023 (their code's ema_update, tau 0.995):
    # for the first ema_warmup of the run's optimizer steps the average copies the weights
    # (decay 0; that code: 0.025); then, with ema_dynamic, the decay is
    # min(ema_decay, (1 + t) / (10 + t)), t = optimizer steps since the warm-up.
    ema_warmup: float = 0.0
    ema_dynamic: bool = False
    # BN running statistics of the average: "average" (EMA, like the weights) or "copy"
    # (those of the trained network, as that code's update_bn does).
    ema_buffers: Literal["average", "copy"] = "average"


@dataclass
class DiagnosticsConfig:
    """Opt-in diagnostics of the AR-AT paper (gradient similarity, drift, BN variance)."""

    every: int = 0  # steps between measurements; 0 = off


@dataclass
class RunSection:
    """Run-level settings: where, seed, precision, logging, checkpoints."""

    name: Optional[str] = None  # runs/<name>; default <method>-<model>-<dataset>-s<seed>
    out: Optional[str] = None  # explicit run directory (overrides name)
    seed: int = 0
    precision: Literal["no", "fp32", "bf16", "fp16"] = "no"  # training forward/backward; "no" = fp32
    deterministic: bool = False  # torch deterministic algorithms (bit-exact resume tests)
    log_every: int = 50  # steps between metrics.jsonl rows
    checkpoint_every: int = 1  # epochs between checkpoints
    checkpoint_every_steps: int = 0  # also every N steps (0 = off)
    keep_checkpoints: int = 2  # keep the last K
    max_steps: Optional[int] = None  # stop early (smoke tests, benchmarks)
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    project: Optional[str] = None  # tracker project (wandb project, MLflow experiment); default $WANDB_PROJECT, else the run name without -s<seed>
    evaluate: bool = True  # run the evaluator at the end and write eval.json


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's frozen config dataclass; ``name`` selects the method."""

    name: str = "standard"

    def resolve(self, run: "RunConfig") -> "MethodConfig":
        """Fills defaults that depend on the rest of the run (e.g. gamma per model)."""
        return self

    def validate(self) -> None:
        """Raises ConfigError for out-of-range values (override in subclasses)."""


@dataclass
class RunConfig:
    """The whole configuration of one training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    run: RunSection = field(default_factory=RunSection)


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunConfig))
_SECTION_CLASSES: dict[str, Any] = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}

# --------------------------------------------------------------------------- typing


def _type_name(tp: Any) -> str:
    """A readable name for a type annotation (``int``, ``list[int]``, ``one of a, b``)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(tp, "__name__", str(tp))


_FRACTION = re.compile(r"^\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against annotation ``tp``; returns it (ints become floats).

    Strings like ``8/255`` are accepted where a float is expected.

    Raises:
        ConfigError: naming ``key``, the expected type, and the value given.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise _type_error(key, tp, value)
    if origin is Literal:
        if isinstance(value, bool):
            value = _yaml11_bool_word(value, args)
        if value in args:
            return value
        raise _type_error(key, tp, value)
    if origin in (list, tuple):
        if isinstance(value, str) and args and args[0] is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, tp, value)
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is float:
        return _coerce_float(value, key, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, tp, value)
    if tp is Any:
        return value
    raise _type_error(key, tp, value)


def _coerce_float(value: Any, key: str, tp: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    elif isinstance(value, str) and _is_number(value):
        # YAML 1.1 reads "5e-4" (no dot) as a string; it is still a number to a user.
        result = float(value)
    elif isinstance(value, str) and (match := _FRACTION.match(value)):
        try:
            result = float(match.group(1)) / float(match.group(2))
        except (ValueError, ZeroDivisionError):
            raise _type_error(key, tp, value) from None
    else:
        raise _type_error(key, tp, value)
    if not math.isfinite(result):
        raise ConfigError(f"{key} must be a finite number, got {brief(value)}")
    return result


def _yaml11_bool_word(value: bool, choices: tuple[Any, ...]) -> Any:
    """The choice a YAML 1.1 boolean came from: ``no``/``off``/``false`` read as False.

    ``run.precision=no`` reaches us as ``False``; where the field's choices include one
    of those words, the user meant that word.
    """
    words = ("no", "off", "false", "n") if not value else ("yes", "on", "true", "y")
    return next((c for c in choices if isinstance(c, str) and c.lower() in words), value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{key} expects {_type_name(tp)}, got {brief(value)} ({type(value).__name__})")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    """Instantiates dataclass ``cls`` from ``values``, rejecting unknown keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"section '{section}' must be a mapping, got {type(values).__name__}")
    hints = _hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(_unknown_key_message(f"{section}.{unknown[0]}", section, sorted(fields)))
    kwargs = {k: coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def _unknown_key_message(key: str, section: str | None, valid: list[str]) -> str:
    """One line: the unknown key, the closest valid one, all valid keys of its section.

    ``section`` None means ``key`` is itself a section name.
    """
    import difflib

    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.6)
    prefix = f"{section}." if section else ""
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    where = f"Valid keys in '{section}'" if section else "Valid sections"
    return f"unknown config key '{key}'.{hint} {where}: {', '.join(valid)}"


# --------------------------------------------------------------------------- method section


def method_config_class(name: str) -> type[MethodConfig]:
    """The frozen config dataclass declared by the method registered as ``name``."""
    from atzoo.registry import METHODS, load_builtins

    load_builtins()
    return METHODS.get(name).config_class


def build_method_config(values: dict[str, Any]) -> MethodConfig:
    """Builds the ``method`` section: ``values['name']`` picks the dataclass."""
    if not isinstance(values, dict):
        raise ConfigError(f"section 'method' must be a mapping, got {type(values).__name__}")
    name = values.get("name", MethodConfig.name)
    if not isinstance(name, str):
        raise ConfigError(f"method.name expects str, got {brief(name)}")
    cls = method_config_class(name)
    return _build_section(cls, {**values, "name": name}, "method")


# --------------------------------------------------------------------------- dict <-> config


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Builds a RunConfig from a nested mapping (a parsed recipe)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"a recipe must be a mapping of sections, got {type(values).__name__}")
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise ConfigError(_unknown_key_message(unknown[0], None, list(SECTIONS)))
    sections: dict[str, Any] = {}
    for f in dataclasses.fields(RunConfig):
        given = values.get(f.name, {}) or {}
        if f.name == "method":
            sections[f.name] = build_method_config(given)
        else:
            sections[f.name] = _build_section(_hints(RunConfig)[f.name], given, f.name)
    return RunConfig(**sections)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain nested dict (YAML-safe) of every field, including defaults."""
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in SECTIONS}


def to_yaml(cfg: RunConfig) -> str:
    """The config as YAML; :func:`from_yaml` of it gives an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def from_yaml(text: str, source: str = "<string>") -> RunConfig:
    """Parses a YAML recipe (bounded: no aliases, size and depth limits)."""
    return config_from_dict(load_yaml(text, source, ConfigError))


def read_config_file(path: str | Path) -> RunConfig:
    """A run's ``config.yaml`` (for eval, resume, ARREST's pretraining run).

    Raises:
        ConfigError: the file is unreadable, not UTF-8, not bounded YAML, or not a config.
    """
    return config_from_dict(read_yaml_file(path, "config"))


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Reads a recipe (a file, or a bundled recipe's name) into a nested dict.

    The dict is validated later by config_from_dict.
    """
    from atzoo.config.resources import find_recipe

    path = find_recipe(path)
    values = read_yaml_file(path, "recipe")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections")
    return values


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[str, str, Any]:
    """Splits ``section.key=value`` into (section, key, YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise ConfigError(f"override '{text}' must look like section.key=value (sections: {', '.join(SECTIONS)})")
    section, _, leaf = key.partition(".")
    if section not in SECTIONS:
        raise ConfigError(_unknown_key_message(section, None, list(SECTIONS)))
    try:
        value = load_yaml(raw, f"override '{key}'", ConfigError) if raw.strip() else None
    except ConfigError as exc:
        if "anchors and aliases" in str(exc) or "nest" in str(exc):  # refused, not read as a string
            raise
        value = raw
    return section, leaf, value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns a copy of the nested dict ``values`` with each override set."""
    merged = {k: _section_dict(k, v) for k, v in (values or {}).items()}
    for text in overrides:
        section, leaf, value = parse_override(text)
        merged.setdefault(section, {})[leaf] = value
    return merged


def _section_dict(section: str, values: Any) -> dict[str, Any]:
    """A copy of one section's mapping (a recipe may hold anything there)."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"section '{section}' must be a mapping, got {type(values).__name__}")
    return dict(values)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Section-wise merge of two nested dicts (``update`` wins)."""
    merged = {k: _section_dict(k, v) for k, v in (base or {}).items()}
    for section, values in (update or {}).items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


#: Where a value of a resolved config came from, lowest layer first (``scaled``: a
#: schedule epoch rescaled to a changed ``optim.epochs``, see :func:`scale_schedule`).
SOURCES: tuple[str, ...] = ("default", "method", "recipe", "flag", "override", "scaled")
#: Epoch-valued schedule settings that follow ``optim.epochs`` in proportion.
SCHEDULE_KEYS: tuple[str, ...] = ("optim.milestones", "optim.warmup_epochs", "averaging.swa_start_epoch")


@dataclass
class Resolution:
    """A resolved config with the origin of every value it sets.

    Attributes:
        config: the resolved, validated :class:`RunConfig`.
        sources: ``section.key`` -> one of :data:`SOURCES` for every key set above the
            dataclass defaults (absent keys come from the dataclass defaults).
        notes: one-line announcements (e.g. the rescaled schedule).
    """

    config: RunConfig
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    recipe: Optional[Path] = None

    def source(self, key: str) -> str:
        """Where ``section.key`` came from (``default`` when no layer set it)."""
        return self.sources.get(key, "default")


def _layer(values: dict[str, Any], update: dict[str, Any], name: str, sources: dict[str, str]) -> dict[str, Any]:
    """``merge(values, update)``, recording ``name`` as the source of each key ``update`` sets."""
    for section, given in (update or {}).items():
        for key in (given or {}) if isinstance(given, dict) else ():
            sources[f"{section}.{key}"] = name
    return merge(values, update)


def _chosen(values: dict[str, Any], section: str, key: str, default: Any) -> Any:
    given = values.get(section) or {}
    return given.get(key, default) if isinstance(given, dict) else default


def method_paper_defaults(method: str, model: str) -> dict[str, Any]:
    """The ``attack``/``optim``/``averaging`` sections the method's own file declares."""
    from atzoo.registry import METHODS, load_builtins

    load_builtins()
    return METHODS.get(method).paper_defaults(model)


def resolve_config(
    recipe: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    recipe_values: dict[str, Any] | None = None,
    **flags: dict[str, Any],
) -> Resolution:
    """Method paper defaults < recipe < flag sections < ``section.key=value`` overrides.

    Changing ``optim.epochs`` with a flag or an override rescales the schedule's epochs
    that the user did not give (:func:`scale_schedule`). Returns the config and where
    each value came from. ``recipe_values``: the recipe's contents already read (the
    file ``recipe`` is then not read again).
    """
    upper: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if recipe_values is None:
        recipe_values = load_recipe(recipe) if recipe else {}
    lower = _layer({}, copy.deepcopy(recipe_values), "recipe", sources)
    for section, given in flags.items():
        upper = _layer(upper, {section: {k: v for k, v in given.items() if v is not None}}, "flag", sources)
    upper = _layer(upper, apply_overrides({}, overrides or []), "override", sources)
    probe = merge(lower, upper)
    method = _chosen(probe, "method", "name", MethodConfig.name)
    model = _chosen(probe, "model", "name", ModelConfig.name)
    base = method_paper_defaults(method, model) if isinstance(method, str) and isinstance(model, str) else {}
    sources = {**{key: "method" for key in _keys(base)}, **sources}
    lower = merge(base, lower)
    values = merge(lower, upper)
    notes = scale_schedule(values, lower, sources)
    cfg = resolve(config_from_dict(values))
    for key in _method_attack_defaults(cfg.method.name):  # filled by resolve() from the method's class
        sources.setdefault(f"attack.{key}", "method")
    return Resolution(cfg, sources, notes, Path(recipe) if recipe else None)


def _method_attack_defaults(method: str) -> list[str]:
    from atzoo.registry import METHODS

    return list(getattr(METHODS.get(method), "attack_defaults", {}))


def annotated_yaml(resolution: Resolution) -> str:
    """The resolved config as YAML, each value followed by ``# <source>``.

    The text parses back (:func:`from_yaml`) to the same config.
    """
    method = resolution.config.method.name
    lines = [f"# resolved config; sources: default (dataclass), method ({method}'s paper defaults), "
             "recipe, flag, override, scaled (rescaled to optim.epochs)"]
    if resolution.recipe is not None:
        lines.append(f"# recipe: {resolution.recipe}")
    for section, values in config_to_dict(resolution.config).items():
        lines.append(f"{section}:")
        for key, value in values.items():
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            text = text[:-3].strip() if text.endswith("...") else text
            lines.append(f"  {key}: {text}  # {resolution.source(f'{section}.{key}')}")
    return "\n".join(lines) + "\n"


def _keys(values: dict[str, Any]) -> list[str]:
    return [f"{s}.{k}" for s, given in values.items() if isinstance(given, dict) for k in given]


def scale_schedule(values: dict[str, Any], lower: dict[str, Any], sources: dict[str, str]) -> list[str]:
    """Rescales milestones, warm-up and SWA start when a flag/override changed ``optim.epochs``.

    A schedule is designed for a number of epochs (the recipe's, the method's or the
    default one); run for ``E'`` instead of ``E`` epochs, its epoch-valued settings are
    multiplied by ``E'/E`` (milestones rounded, at least 1, distinct and ordered:
    :func:`scale_milestones`; warm-up kept as a fraction of an epoch, which the schedule runs
    for at least ``min(WARMUP_MIN_STEPS, 1 epoch)`` steps; SWA start rounded and kept inside
    the run), so a 30-epoch run still decays its
    learning rate. Values the user gave as flags or overrides are kept as given.

    Returns:
        One announcement line, or none when nothing was rescaled.
    """
    if sources.get("optim.epochs") not in ("flag", "override"):
        return []
    new = values["optim"]["epochs"]
    old = _chosen(lower, "optim", "epochs", OptimConfig.epochs)
    if not isinstance(new, int) or not isinstance(old, int) or new == old or new < 1 or old < 1:
        return []
    changed: list[str] = []
    for key in SCHEDULE_KEYS:
        if sources.get(key) in ("flag", "override") or not _schedule_key_used(values, key):
            continue
        section, leaf = key.split(".")
        before = _chosen(values, section, leaf, getattr(_SECTION_CLASSES[section](), leaf))
        after = _scaled(leaf, before, new / old, new, old)
        if after != before:
            values.setdefault(section, {})[leaf] = after
            sources[key] = "scaled"
            changed.append(f"{key} {before} -> {after}{_scaling_remark(leaf, before, after, new, old)}")
    if not changed:
        return []
    return [f"optim.epochs {old} -> {new}: scaled in proportion {', '.join(changed)} "
            "(give them explicitly to keep other values)"]


def _schedule_key_used(values: dict[str, Any], key: str) -> bool:
    """Whether the run uses ``key`` (milestones/warm-up: piecewise schedule; SWA start: SWA on)."""
    piecewise = _chosen(values, "optim", "schedule", OptimConfig.schedule) == "piecewise"
    if key == "optim.milestones":
        return piecewise
    if key == "optim.warmup_epochs":
        return piecewise and _chosen(values, "optim", "warmup_lr", OptimConfig.warmup_lr) is not None
    return bool(_chosen(values, "averaging", "swa", AveragingConfig.swa))


def _scaled(leaf: str, value: Any, ratio: float, epochs: int, old_epochs: int) -> Any:
    """One schedule value times ``ratio``, kept inside a run of ``epochs`` epochs."""
    if leaf == "milestones" and isinstance(value, list) and all(type(m) is int for m in value):
        return scale_milestones(value, ratio, epochs, old_epochs)
    if leaf == "warmup_epochs" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return round(value * ratio, 6)
    if leaf == "swa_start_epoch" and isinstance(value, int) and not isinstance(value, bool):
        return min(round(value * ratio), max(epochs - 1, 0))
    return value


def scale_milestones(milestones: list[int], ratio: float, epochs: int, old_epochs: int) -> list[int]:
    """Milestones of an ``old_epochs`` schedule for an ``epochs`` run: distinct and ordered.

    Each is multiplied by ``ratio`` and rounded, never before the first epoch's end (a decay
    from the start is no schedule) and, for a milestone inside the old run, never rounded
    past the new run's last epoch. Decays that rounding puts in one epoch (``[100, 150]`` of
    200 epochs on 3 epochs: ``[2, 2]``, the learning rate x0.01 at once) move to the
    following epochs (``[2, 3]``), keeping the proportions of the run rather than pulling
    decays earlier; one moved to or past the end is not reached, and the scaling note says
    so (:func:`_scaling_remark`). A milestone at or past the old run's end stays past the
    new one's.
    """
    scaled = []
    for m in sorted(milestones):
        value = round(m * ratio)
        if m < old_epochs:
            value = min(value, epochs - 1)
        value = max(value, 1, scaled[-1] + 1 if scaled else 1)
        if m >= old_epochs:
            value = max(value, epochs)
        scaled.append(value)
    return scaled


def _scaling_remark(leaf: str, before: Any, after: Any, epochs: int, old_epochs: int) -> str:
    """What a reader of the scaling note must know beyond ``before -> after``."""
    if leaf == "milestones" and isinstance(before, list) and isinstance(after, list):
        planned = sum(1 for m in before if isinstance(m, int) and m < old_epochs)
        reached = sum(1 for m in after if isinstance(m, int) and m < epochs)
        if reached < planned:
            fit = f"only {reached} of its {planned} decays falls" if reached else "none of its decays falls"
            return f" ({fit} inside a {epochs}-epoch run)"
    if leaf == "warmup_epochs" and isinstance(after, (int, float)) and 0 < after < 1:
        return f" (at least min({WARMUP_MIN_STEPS} steps, 1 epoch))"
    return ""


#: The shortest warm-up, in optimizer steps (capped at one epoch), that a piecewise schedule
#: with ``warmup_lr`` runs: a warm-up exists to steady the first steps, whose number does not
#: shrink with the run (``--epochs 1`` on a 100-epoch LBGAT schedule would otherwise warm up
#: for 0.01 of an epoch, i.e. no step, and diverge at step 8 on the digits).
WARMUP_MIN_STEPS = 100


def build_config(
    recipe: str | Path | None = None,
    overrides: list[str] | None = None,
    **flags: dict[str, Any],
) -> RunConfig:
    """Recipe, then flag sections (``method={"name": "at"}``), then overrides -> RunConfig.

    Below the recipe lie the selected method's paper defaults
    (``Method.paper_defaults``); the method's training-attack defaults are applied to
    unset (``None``) attack fields and model-dependent method defaults are filled by
    ``MethodConfig.resolve``. See :func:`resolve_config` for the sources of each value.
    """
    return resolve_config(recipe, overrides, **flags).config


def resolve(cfg: RunConfig) -> RunConfig:
    """Fills method-dependent defaults (training-attack mode/start, gamma per model)."""
    cfg.attack = resolve_attack(cfg.attack, cfg.method.name)
    if cfg.attack.precision == "same":  # config.yaml records the precision the attack runs in
        from atzoo.precision import attack_precision

        cfg.attack.precision = attack_precision("same", cfg.run.precision)  # type: ignore[assignment]
    cfg.method = cfg.method.resolve(cfg)
    validate(cfg)
    return cfg


def resolve_attack(attack: AttackConfig, method_name: str) -> AttackConfig:
    """The training attack with no ``None`` left: the method's ``attack_defaults``, else a
    uniform random start and eval-mode BN (a copy; ``attack`` is not changed)."""
    from atzoo.registry import METHODS

    defaults = {"random_start": "uniform", "bn_mode": "eval",
                **getattr(METHODS.get(method_name), "attack_defaults", {})}
    return dataclasses.replace(attack, **{k: v for k, v in defaults.items() if getattr(attack, k) is None})


def validate(cfg: RunConfig) -> None:
    """Range checks that types alone cannot express; raises ConfigError."""
    checks: list[tuple[bool, str]] = [
        (0 < cfg.attack.eps <= 1, f"attack.eps must be in (0, 1], got {cfg.attack.eps}"),
        (cfg.attack.step_size > 0, f"attack.step_size must be > 0, got {cfg.attack.step_size}"),
        (cfg.attack.steps >= 1, f"attack.steps must be >= 1, got {cfg.attack.steps}"),
        (cfg.optim.epochs >= 1, f"optim.epochs must be >= 1, got {cfg.optim.epochs}"),
        (cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}"),
        (cfg.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {cfg.optim.weight_decay}"),
        (cfg.optim.grad_accum >= 1, f"optim.grad_accum must be >= 1, got {cfg.optim.grad_accum}"),
        (cfg.optim.grad_clip is None or cfg.optim.grad_clip > 0,
         f"optim.grad_clip must be > 0 (or null for no clipping), got {cfg.optim.grad_clip}"),
        (cfg.optim.warmup_lr is None or cfg.optim.warmup_lr >= 0,
         f"optim.warmup_lr must be >= 0 (or null for no warm-up), got {cfg.optim.warmup_lr}"),
        (cfg.attack.start_std > 0, f"attack.start_std must be > 0, got {cfg.attack.start_std}"),
        (cfg.eval.pgd_step_size is None or cfg.eval.pgd_step_size > 0,
         f"eval.pgd_step_size must be > 0, got {cfg.eval.pgd_step_size}"),
        (cfg.data.batch_size >= 1, f"data.batch_size must be >= 1, got {cfg.data.batch_size}"),
        (cfg.data.eval_batch_size >= 1, f"data.eval_batch_size must be >= 1, got {cfg.data.eval_batch_size}"),
        (cfg.eval.batch_size >= 1, f"eval.batch_size must be >= 1, got {cfg.eval.batch_size}"),
        (cfg.eval.eps is None or 0 < cfg.eval.eps <= 1, f"eval.eps must be in (0, 1], got {cfg.eval.eps}"),
        (cfg.eval.n_ex is None or cfg.eval.n_ex >= 1, f"eval.n_ex must be >= 1, got {cfg.eval.n_ex}"),
        (cfg.run.keep_checkpoints >= 1, f"run.keep_checkpoints must be >= 1, got {cfg.run.keep_checkpoints}"),
        (cfg.run.log_every >= 1, f"run.log_every must be >= 1, got {cfg.run.log_every}"),
        (cfg.diagnostics.every >= 0, f"diagnostics.every must be >= 0, got {cfg.diagnostics.every}"),
        (cfg.eval.val_every >= 0, f"eval.val_every must be >= 0 (0 = no validation), got {cfg.eval.val_every}"),
        (cfg.data.val_size is None or cfg.data.val_size >= 1, f"data.val_size must be >= 1, got {cfg.data.val_size}"),
        (cfg.eval.weights == "last" or cfg.eval.val_every >= 1,
         "eval.weights=best needs a validation: set eval.val_every (e.g. eval.val_every=1)"),
        (cfg.eval.weights == "last" or not (cfg.averaging.swa or cfg.averaging.ema),
         "eval.weights=best picks among the epochs' weights, averaging exports the average; choose one"),
        (0 < cfg.averaging.ema_decay < 1, f"averaging.ema_decay must be in (0, 1), got {cfg.averaging.ema_decay}"),
        (cfg.run.max_steps is None or cfg.run.max_steps >= 1,
         f"run.max_steps must be >= 1 (or null for no limit), got {cfg.run.max_steps}"),
        (cfg.data.num_workers >= 0, f"data.num_workers must be >= 0, got {cfg.data.num_workers}"),
        (cfg.run.checkpoint_every >= 1, f"run.checkpoint_every must be >= 1, got {cfg.run.checkpoint_every}"),
        (cfg.run.checkpoint_every_steps >= 0,
         f"run.checkpoint_every_steps must be >= 0, got {cfg.run.checkpoint_every_steps}"),
        (not cfg.model.pretrained or cfg.model.name.startswith("timm:"),
         f"model.pretrained=true needs a timm:NAME model (timm holds the weights); '{cfg.model.name}' is built "
         "from scratch only"),
        (cfg.averaging.swa_every_steps >= 1,
         f"averaging.swa_every_steps must be >= 1, got {cfg.averaging.swa_every_steps}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _check_attack_name(cfg.attack.name)
    cfg.method.validate()


def _check_attack_name(name: str) -> None:
    """``attack.name`` must be a registered per-batch attack (AutoAttack is evaluation only)."""
    from atzoo.registry import ATTACKS, load_builtins

    load_builtins()
    names = [n for n, fn in ATTACKS.items() if getattr(fn, "per_batch", True)]  # all but AutoAttack
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown training attack attack.name='{name}'.{hint} Valid choices: {', '.join(names)}")
