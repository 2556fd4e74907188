"""The evaluator: clean accuracy, PGD-N, AutoAttack, per-class accuracy, invariance.

What one :func:`evaluate` call measures, with the model in eval mode throughout, on ONE
set of test images: the first ``eval.n_ex`` examples of the test split in the dataset's
order (the whole split with ``n_ex: null``). Every attack of the call runs on exactly that
set, and the set is recorded in eval.json (``eval_set``), so clean, PGD and AutoAttack
numbers always describe the same images. (The first N, not a class-balanced sample: the
CIFAR test files are not sorted by class, so their first 1000 images hold ~100 per
class; the per-class accuracies show any imbalance.)

Headline accuracies (see :mod:`atzoo.eval.results`): ``clean_acc``; ``pgd20_acc`` (each
attack alone, an example counting only if it is also classified correctly clean);
``autoattack_acc``, standard AutoAttack alone, the number RobustBench's ``benchmark()``
and the papers report; and ``worst_case_acc``, correct under every attack run on the set.
The per-example outcomes are kept in ``examples`` (packed bits), from which later
evaluations of the same weights on the same set are merged. Every payload names the
weights it measured (``weights_fingerprint``).

Threat model: the dataset's **benchmark** threat model by default (declared where the
dataset is registered, :func:`atzoo.data.bundle.benchmark_threat`: CIFAR L-inf 8/255 and
L2 0.5, digits 32/255), whatever eps the method trained with, so that every method on one
dataset is measured alike; ``eval.eps`` overrides it and ``eval.threat_models`` adds more.

* ``clean``: accuracy on the set (and per class).
* ``pgd20`` (any ``pgd<N>``): PGD-N on the cross-entropy from a uniform random start,
  step 2/255 for L-inf and eps/4 for L2 (the PGD-20 of Madry et al. and of every paper
  here); accuracy overall and per class. With ``pgd20``, also the representation
  invariance of the AR-AT paper (Waseda et al., Table 5): the mean cosine similarity
  between the penultimate features of clean and PGD-20 inputs over the test set, and
  the step check of the gradient-masking flags (PGD-5/20/50 on the first 500 examples
  from one random start).
* any other per-batch attack of ``atzoo list attacks`` (``fgsm``, ``fgsm_rs``, one you
  registered): accuracy overall and per class under ``<name>_acc``, with the evaluation's
  norm, eps and step size (those of them the attack takes), from a random start where it
  has one. ``pgd`` means ``pgd20``.
* ``aa`` (or ``autoattack``): the reference AutoAttack on the same examples
  (:func:`atzoo.attacks.run_autoattack`, sharded over processes, resumable from
  ``autoattack_state.json`` in the run directory).

Several processes (``accelerate launch``) share the work: each evaluates its shard of the
test set and the counts are summed; AutoAttack and the step check are split by chunks.
The payload is the content of ``eval.json`` (see :mod:`atzoo.eval.results`).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo import __version__
from atzoo.attacks import BatchAttack, build_attack, pgd, run_autoattack, unwrap_model
from atzoo.attacks.autoattack import (
    DEFAULT_CHUNK_SIZE,
    VERSION_ATTACKS,
    check_autoattack_args,
    check_autoattack_classes,
)
from atzoo.attacks.mode import attack_mode
from atzoo.config.threat import DEFAULT_EPS, ThreatModel, benchmark_eps  # noqa: F401  (the one threat-model type; re-exported)
from atzoo.attacks.sharding import ChunkResult, ProcessGroup, ShardedRun
from atzoo.files.common import compare_state_dicts
from atzoo.config import AttackConfig, EvalConfig
from atzoo.data.fingerprint import dataset_identity
from atzoo.errors import AtzooError, CheckpointError, ConfigError, brief
from atzoo.eval.results import (
    EVAL_FILE,
    encode_flags,
    headline_accuracies,
    weights_fingerprint,
    masking_flags,
    read_eval_json,
    write_eval_json,
)
from atzoo.precision import autocast
from atzoo.provenance import evaluation_provenance
from atzoo.files.safe_read import read_json_file

#: PGD steps compared by the ``pgd_not_decreasing`` flag, and the examples it uses.
STEP_CHECK_STEPS: tuple[int, ...] = (5, 20, 50)
STEP_CHECK_EXAMPLES = 500
#: Examples per chunk of the step check (fixed, so the result does not depend on processes).
STEP_CHECK_CHUNK = 100
AA_STATE_FILE = "autoattack_state.json"
_PGD_NAME = re.compile(r"^pgd(\d+)$")
_ALIASES = {"autoattack": "aa", "pgd": "pgd20"}
_VALID = "clean, pgd<N> (e.g. pgd20), aa"


def registered_eval_attacks() -> list[str]:
    """Registered per-batch attacks evaluated by name (beside ``clean``, ``pgd<N>`` and ``aa``)."""
    from atzoo.attacks import batch_attack_names

    return [n for n in batch_attack_names() if n not in _ALIASES and not _PGD_NAME.match(n)]


# --------------------------------------------------------------------------- attack names


def parse_attacks(names: Sequence[str]) -> list[str]:
    """Normalises evaluation attack names: ``clean``, ``pgd<N>`` (N >= 1), ``aa``, and the
    other registered per-batch attacks (:func:`registered_eval_attacks`).

    ``autoattack`` is accepted for ``aa`` and ``pgd`` for ``pgd20`` (so every name of
    ``atzoo list attacks`` is valid); duplicates are dropped; any attack measured in the
    test pass implies ``clean`` (measured in the same pass and needed by the flags).

    Raises:
        ConfigError: an unknown name (with the closest valid one) or ``pgd0``.
    """
    result: list[str] = []
    extra = registered_eval_attacks()
    valid = f"{_VALID}, {', '.join(extra)}" if extra else _VALID
    for raw in names:
        name = _ALIASES.get(raw.strip().lower(), raw.strip().lower())
        match = _PGD_NAME.match(name)
        if match and int(match.group(1)) < 1:
            raise ConfigError(f"attack '{raw}' has zero steps; PGD needs at least 1 step (e.g. pgd20)")
        if name not in ("clean", "aa", *extra) and not match:
            close = difflib.get_close_matches(name, ["clean", "pgd20", "pgd50", "aa", "autoattack", *extra], n=1,
                                              cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown attack '{raw}'.{hint} Valid choices: {valid}")
        if name not in result:
            result.append(name)
    if not result:
        raise ConfigError(f"no attack given. Valid choices: {valid}")
    if any(_PGD_NAME.match(n) or n in extra for n in result) and "clean" not in result:
        result.insert(0, "clean")
    return result


def pgd_steps_of(attacks: Sequence[str]) -> list[int]:
    """The step counts of the ``pgd<N>`` names in ``attacks``."""
    return [int(m.group(1)) for n in attacks if (m := _PGD_NAME.match(n))]


def parse_threat_models(items: Sequence[str], base: ThreatModel) -> list[ThreatModel]:
    """``eval.threat_models`` entries (``linf:0.031``, ``l2:0.5``, ``linf:8/255``) as threat
    models other than ``base`` (PGD step as :meth:`ThreatModel.resolve` sets it)."""
    from atzoo.config import coerce

    extra: list[ThreatModel] = []
    for item in items:
        norm, sep, value = str(item).partition(":")
        if not sep or norm.strip() not in ("linf", "l2"):
            raise ConfigError(f"eval.threat_models entries are NORM:EPS with NORM linf or l2 (e.g. linf:0.031), "
                              f"got {item!r}")
        try:
            eps = coerce(value.strip(), float, "eval.threat_models")
        except ConfigError:
            raise ConfigError(f"eval.threat_models: {value!r} is not a radius (e.g. 0.031 or 8/255)") from None
        threat = ThreatModel.resolve(EvalConfig(norm=norm.strip(), eps=eps), AttackConfig())
        threat = ThreatModel(threat.norm, threat.eps, threat.step_size, "eval.threat_models")
        same = threat.norm == base.norm and math.isclose(threat.eps, base.eps, abs_tol=1e-9)
        if not same and all(t.label != threat.label for t in extra):
            extra.append(threat)
    return extra


# --------------------------------------------------------------------------- process helpers


def _all_reduce_sum(t: Tensor, accelerator: Any = None) -> Tensor:
    """Sums ``t`` over processes (identity with one)."""
    if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
        return accelerator.reduce(t, reduction="sum")
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def _group(accelerator: Any) -> ProcessGroup:
    if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
        return ProcessGroup(accelerator.process_index, accelerator.num_processes)
    return ProcessGroup.current()


def _device(model: nn.Module, accelerator: Any) -> torch.device:
    if accelerator is not None:
        return accelerator.device
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


# --------------------------------------------------------------------------- progress


class _Progress:
    """A rich progress display on stderr (main process only; disabled on request)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None

    @contextmanager
    def show(self) -> Iterator["_Progress"]:
        if not self.enabled:
            yield self
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=False) as progress:
            self._progress = progress
            yield self
        self._progress = None

    def task(self, description: str, total: int) -> Any:
        return self._progress.add_task(description, total=total) if self._progress is not None else None

    def advance(self, task: Any, amount: int = 1) -> None:
        if self._progress is not None and task is not None:
            self._progress.advance(task, amount)

    def set_total(self, task: Any, total: int) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, total=total)

    def set_completed(self, task: Any, completed: int) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, completed=completed)

    def describe(self, task: Any, description: str) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, description=description)


# --------------------------------------------------------------------------- the passes


@dataclass
class _PassTotals:
    """Per-class counts summed over batches (and processes)."""

    total: Tensor  # (C,) examples per class
    correct: dict[str, Tensor]  # name -> (C,) correct per class (PGD: also correct clean)
    cos_sum: Tensor  # () sum of clean/PGD-20 feature cosines
    flags: dict[str, Tensor]  # name -> (n,) per-example outcome of that attack alone (0/1)


def _test_pass(
    net: nn.Module, bundle: Any, cfg: EvalConfig, threat: ThreatModel, steps_list: list[int], *,
    device: torch.device, group: ProcessGroup, accelerator: Any, progress: _Progress, seed: int, n_sub: int,
    extra: Sequence[BatchAttack] = (),
) -> _PassTotals:
    """Clean and PGD-N accuracy per class over this process's shard, then summed.

    The invariance needs penultimate features; a model without them (any ``nn.Module``
    that is neither an atzoo nor a timm network) is measured on its logits alone.
    """
    from atzoo.data import make_eval_loader
    from atzoo.models import has_penultimate_features

    loader = make_eval_loader(bundle, cfg.batch_size, device=device, rank=group.rank, world_size=group.world_size,
                              limit=n_sub)
    classes = bundle.num_classes
    run_names = ["clean"] + [f"pgd{s}" for s in steps_list] + [a.name for a in extra]
    totals = _PassTotals(torch.zeros(classes, device=device),
                         {n: torch.zeros(classes, device=device) for n in run_names},
                         torch.zeros((), device=device), {n: torch.zeros(n_sub, device=device) for n in run_names})
    invariance = cfg.invariance and 20 in steps_list and has_penultimate_features(net)
    names = [f"PGD-{s}" for s in steps_list] + [a.name for a in extra]
    task = progress.task("clean + " + ", ".join(names) if names else "clean",
                         len(loader))
    offset = loader.start
    for x, y in loader:
        _evaluate_batch(net, x, y, threat, steps_list, totals, invariance=invariance, seed=seed + offset,
                        first_index=offset)
        rows = slice(offset, offset + x.shape[0])
        clean = totals.flags["clean"][rows].bool()
        for attack in extra:
            correct = _logits_under(net, attack, x, y, seed + offset).argmax(dim=1).eq(y)
            totals.flags[attack.name][rows] = correct.to(totals.flags["clean"].dtype)
            _add_per_class(totals.correct[attack.name], correct & clean, y)  # worst case with clean
        offset += x.shape[0]
        progress.advance(task)
    totals.total = _all_reduce_sum(totals.total, accelerator)
    totals.correct = {k: _all_reduce_sum(v, accelerator) for k, v in totals.correct.items()}
    totals.cos_sum = _all_reduce_sum(totals.cos_sum, accelerator)
    totals.flags = {k: _all_reduce_sum(v, accelerator) for k, v in totals.flags.items()}  # disjoint shards
    return totals


def _evaluate_batch(
    net: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, steps_list: list[int], totals: _PassTotals, *,
    invariance: bool, seed: int, first_index: int,
) -> None:
    """Adds one batch's per-class counts, per-example outcomes (and feature cosines) to ``totals``."""
    from atzoo.models import classify_features, penultimate_features

    classes = totals.total.shape[0]
    totals.total += torch.bincount(y, minlength=classes).to(totals.total.dtype)
    with torch.no_grad():
        z_clean = penultimate_features(net, x) if invariance else None
        logits = classify_features(net, z_clean) if z_clean is not None else net(x)
    rows = slice(first_index, first_index + x.shape[0])
    clean = _count(totals.correct["clean"], logits, y)
    totals.flags["clean"][rows] = clean.to(totals.flags["clean"].dtype)
    for steps in steps_list:
        x_adv = pgd(net, x, y, eps=threat.eps, step_size=threat.step_size, steps=steps, norm=threat.norm,
                    random_start="uniform", loss="ce", mode="eval", generator=_generator(x.device, seed))
        with torch.no_grad():
            z_adv = penultimate_features(net, x_adv) if invariance and steps == 20 else None
            adv_logits = classify_features(net, z_adv) if z_adv is not None else net(x_adv)
        correct = adv_logits.argmax(dim=1).eq(y)
        totals.flags[f"pgd{steps}"][rows] = correct.to(totals.flags["clean"].dtype)
        _add_per_class(totals.correct[f"pgd{steps}"], correct & clean, y)  # worst case with clean
        if z_clean is not None and z_adv is not None:
            totals.cos_sum += F.cosine_similarity(z_clean.float().flatten(1), z_adv.float().flatten(1), dim=1).sum()


def _logits_under(net: nn.Module, attack: BatchAttack, x: Tensor, y: Tensor, seed: int) -> Tensor:
    """Logits of ``net`` on ``attack``'s adversarial batch (eval mode, seeded random start)."""
    x_adv = attack(net, x, y, mode="eval", generator=_generator(x.device, seed))
    with torch.no_grad():
        return net(x_adv)


def _count(per_class: Tensor, logits: Tensor, y: Tensor) -> Tensor:
    """Adds correct predictions per class to ``per_class``; returns the per-example flags."""
    correct = logits.argmax(dim=1).eq(y)
    _add_per_class(per_class, correct, y)
    return correct


def _add_per_class(per_class: Tensor, correct: Tensor, y: Tensor) -> None:
    per_class += torch.bincount(y, weights=correct.to(per_class.dtype), minlength=per_class.shape[0])


def _first_examples(bundle: Any, n: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` test examples as CPU tensors (identical on every process)."""
    from atzoo.data import make_eval_loader

    loader = make_eval_loader(bundle, batch_size, device="cpu", limit=n)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _step_check(
    net: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *, device: torch.device, group: ProcessGroup,
    progress: _Progress, seed: int,
) -> dict[str, Any]:
    """PGD-5/20/50 accuracy on ``(x, y)`` from one random start per chunk (same for all steps)."""

    def work(index: int, start: int, stop: int) -> ChunkResult:
        xb, yb = x[start:stop].to(device), y[start:stop].to(device)
        out: ChunkResult = {}
        for steps in STEP_CHECK_STEPS:
            x_adv = pgd(net, xb, yb, eps=threat.eps, step_size=threat.step_size, steps=steps, norm=threat.norm,
                        random_start="uniform", mode="eval", generator=_generator(device, seed + index))
            with torch.no_grad():
                out[str(steps)] = net(x_adv).argmax(dim=1).eq(yb).cpu().tolist()
            progress.advance(task)
        return out

    task = progress.task("PGD step check (5/20/50)", 0)
    flags = ShardedRun(n=x.shape[0], chunk_size=STEP_CHECK_CHUNK, group=group).run(
        work, on_plan=lambda mine: progress.set_total(task, len(mine) * len(STEP_CHECK_STEPS)))
    return {"n_examples": int(x.shape[0]),
            "acc": {k: 100.0 * sum(v) / len(v) for k, v in flags.items()}}


def _autoattack(
    net: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig, threat: ThreatModel, *, group: ProcessGroup,
    progress: _Progress, seed: int, out: Path | None, aa_attacks: Sequence[str] | None, chunk_size: int,
) -> Any:
    title = f"AutoAttack ({cfg.aa_version})"
    task = progress.task(title, 0)
    order = list(aa_attacks or []) if cfg.aa_version == "custom" else list(VERSION_ATTACKS.get(cfg.aa_version, ()))
    watch = AutoAttackWatch(title, order, progress, task)
    return run_autoattack(
        net, x, y, eps=threat.eps, norm=threat.norm, version=cfg.aa_version, attacks=aa_attacks, seed=seed,
        chunk_size=chunk_size, state_path=(out / AA_STATE_FILE) if out is not None else None, group=group,
        on_plan=watch.plan, on_chunk_done=watch.chunk_done, on_attack=watch.attack_done,
    )


class AutoAttackWatch:
    """AutoAttack's progress inside the ensemble: one bar unit per attack per chunk, and in
    the description the attack just finished, how many of the images attacked so far are
    still robust, and the attack now running (``AutoAttack (standard) apgd-ce: 20/32 robust,
    running apgd-t``). An attack the package skips (no robust example left) is counted when
    its chunk finishes."""

    def __init__(self, title: str, order: list[str], progress: _Progress, task: Any) -> None:
        self.title, self.order, self.progress, self.task = title, order, progress, task
        self.attacks = max(len(order), 1)
        self.chunks_done = self.images_done = self.robust_done = 0

    def plan(self, mine: list[int]) -> None:
        self.progress.set_total(self.task, len(mine) * self.attacks)

    def attack_done(self, index: int, attack: str, robust: int, examples: int) -> None:
        self.progress.advance(self.task)
        position = self.order.index(attack) if attack in self.order else len(self.order)
        running = f", running {self.order[position + 1]}" if position + 1 < len(self.order) and robust else ""
        self._describe(f"{attack}: {self.robust_done + robust}/{self.images_done + examples} robust{running}")

    def chunk_done(self, index: int, flags: ChunkResult) -> None:
        self.chunks_done += 1
        self.images_done += len(flags["robust"])
        self.robust_done += sum(bool(r) for r in flags["robust"])
        self.progress.set_completed(self.task, self.chunks_done * self.attacks)
        self._describe(f"{self.robust_done}/{self.images_done} robust")

    def _describe(self, text: str) -> None:
        self.progress.describe(self.task, f"{self.title} {text}")


# --------------------------------------------------------------------------- evaluate


def evaluate(
    model: nn.Module,
    bundle: Any,
    cfg: EvalConfig,
    *,
    attack_cfg: AttackConfig,
    accelerator: Any = None,
    progress: bool = True,
    out: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    seed: int = 0,
    aa_attacks: Sequence[str] | None = None,
    aa_chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, Any]:
    """Evaluates ``model`` on ``bundle``'s test split; returns the eval.json payload.

    Every process must call it (with ``accelerator`` or an initialised torch.distributed
    group); each evaluates its shard and all get the same payload.

    Args:
        model: the classifier (wrappers removed; eval mode during the evaluation, every
            submodule's mode restored afterwards).
        bundle: the dataset (:class:`atzoo.data.DatasetBundle`).
        cfg: attacks, norm/eps (``None``: the training attack's), ``n_ex``, AutoAttack
            version, batch size, whether to measure invariance.
        attack_cfg: the training attack (default norm and eps).
        accelerator: an ``accelerate.Accelerator`` (device and processes), optional.
        progress: show rich progress bars (main process only).
        out: run directory: the merged payload is written to ``out/eval.json`` (main
            process) and AutoAttack keeps its resumable state there.
        meta: ``model_meta.json`` of the run (``method`` and ``model`` names).
        seed: base seed of the PGD random starts and of AutoAttack.
        aa_attacks: the attack list for ``cfg.aa_version == "custom"``.
        aa_chunk_size: AutoAttack examples per chunk (the unit of sharding and resuming).

    Returns:
        The payload (merged with the existing ``eval.json`` when ``out`` is given).
    """
    attacks = parse_attacks(cfg.attacks)
    threat = ThreatModel.resolve(cfg, attack_cfg, bundle)
    extra_threats = parse_threat_models(cfg.threat_models, threat)
    check_finite_model(model, "the model")
    if "aa" in attacks:
        check_autoattack_args(threat.norm, threat.eps, cfg.aa_version, aa_attacks)
        check_autoattack_classes(cfg.aa_version, aa_attacks, bundle.num_classes, bundle.name)
    n_test = len(bundle.test)
    n_sub = n_test if cfg.n_ex is None else min(cfg.n_ex, n_test)
    group = _group(accelerator)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        read_eval_json(out_path / EVAL_FILE)  # a damaged eval.json fails now, not after the attacks
    device = _device(model, accelerator)
    results: dict[str, Any] = {"eval_set": eval_set(n_sub, n_test)}
    flags: dict[str, Tensor] = {}
    # Every evaluation attack runs in eval.precision (fp32 unless asked), whatever autocast
    # the caller is in: robustness is measured at full precision by default.
    with attack_mode(unwrap_model(model), "eval", None) as net, autocast(cfg.precision, device), \
            _Progress(progress and group.is_main).show() as bars:
        steps_list = pgd_steps_of(attacks)
        extra = [build_attack(n, threat.attack_settings()) for n in attacks if n in registered_eval_attacks()]
        if "clean" in attacks:
            totals = _test_pass(net, bundle, cfg, threat, steps_list, device=device, group=group,
                                accelerator=accelerator, progress=bars, seed=seed, n_sub=n_sub, extra=extra)
            results.update(_pass_results(totals, bundle, steps_list, cfg, threat, net))
            flags.update({k: v.bool().cpu() for k, v in totals.flags.items()})
            results["attacks"].update({a.name: a.describe() for a in extra})
        m = min(STEP_CHECK_EXAMPLES, n_sub)
        need = max(n_sub if "aa" in attacks else 0, m if 20 in steps_list else 0)
        if need:
            x_sub, y_sub = _first_examples(bundle, need, cfg.batch_size)
        if 20 in steps_list:
            results["pgd_steps"] = _step_check(net, x_sub[:m], y_sub[:m], threat, device=device, group=group,
                                               progress=bars, seed=seed)
        if "aa" in attacks:
            aa = _autoattack(net, x_sub[:n_sub], y_sub[:n_sub], cfg, threat, group=group, progress=bars,
                             seed=seed, out=out_path, aa_attacks=aa_attacks, chunk_size=aa_chunk_size)
            results.update(aa_clean_acc=aa.clean_acc, aa_n_examples=aa.n)
            results["attacks"] = {**results.get("attacks", {}), "aa": aa.settings}
            flags.setdefault("clean", aa.clean_flags)
            flags["aa"] = aa.robust_flags
    results["examples"] = {"n": n_sub, "flags": {k: encode_flags(v) for k, v in flags.items()}}
    results.update(headline_accuracies(results["examples"]))
    results["weights_fingerprint"] = weights_fingerprint(unwrap_model(model))
    payload = _payload(results, bundle, threat, meta or {}, n_sub, cfg.precision)
    if extra_threats:
        payload["other_threat_models"] = {
            t.label: _other_threat_model(model, bundle, cfg, t, attack_cfg=attack_cfg, accelerator=accelerator,
                                         progress=progress, meta=meta, seed=seed, aa_attacks=aa_attacks,
                                         aa_chunk_size=aa_chunk_size)
            for t in extra_threats}
    if out_path is not None:
        if group.is_main:
            payload = write_eval_json(out_path, payload, attacks)
        payload = group.broadcast(payload)  # every process returns the merged payload
    return payload


#: Keys of an evaluation under an extra threat model kept in ``other_threat_models``.
_OTHER_KEYS = ("norm", "eps", "threat_model_source", "n_examples", "clean_acc", "pgd20_acc", "autoattack_acc",
               "worst_case_acc", "aa_n_examples", "eval_set", "attacks", "flags")


def _other_threat_model(model: nn.Module, bundle: Any, cfg: EvalConfig, threat: ThreatModel, **kwargs: Any
                        ) -> dict[str, Any]:
    """The headline numbers under one of ``eval.threat_models`` (same attacks, same images)."""
    import dataclasses

    other = dataclasses.replace(cfg, norm=threat.norm, eps=threat.eps, threat_models=[])
    payload = evaluate(model, bundle, other, out=None, **kwargs)
    return {k: payload.get(k) for k in _OTHER_KEYS} | {"threat_model_source": threat.source}


def _pass_results(totals: _PassTotals, bundle: Any, steps_list: list[int], cfg: EvalConfig,
                  threat: ThreatModel, net: nn.Module) -> dict[str, Any]:
    """Accuracies (percent), per-class accuracies and the invariance from the test pass."""
    from atzoo.models import has_penultimate_features

    n = float(totals.total.sum().item())
    results: dict[str, Any] = {"per_class": {}, "attacks": {"clean": {}}}
    for name, correct in totals.correct.items():
        results[f"{name}_acc"] = 100.0 * correct.sum().item() / n
        results["per_class"][name] = {
            cls: (100.0 * c / t if t else None)
            for cls, c, t in zip(_class_names(bundle), correct.tolist(), totals.total.tolist())
        }
    for steps in steps_list:
        results["attacks"][f"pgd{steps}"] = threat.pgd_settings(steps)
    if 20 in steps_list:
        measured = cfg.invariance and has_penultimate_features(net)
        results["invariance_cos"] = totals.cos_sum.item() / n if measured else None
    return results


def eval_set(n: int, test_size: int) -> dict[str, Any]:
    """The record of which test images an evaluation used (the first ``n`` of the split)."""
    return {"split": "test", "selection": "first", "n_examples": n, "test_size": test_size}


def _class_names(bundle: Any) -> list[str]:
    names = list(getattr(bundle, "classes", []) or [])
    return names if len(names) == bundle.num_classes else [str(i) for i in range(bundle.num_classes)]


def _payload(results: dict[str, Any], bundle: Any, threat: ThreatModel, meta: dict[str, Any],
             n_examples: int | None, precision: str) -> dict[str, Any]:
    payload = {
        "method": meta.get("method"),
        "model": meta.get("model"),
        "dataset": bundle.name,
        "norm": threat.norm,
        "eps": threat.eps,
        "threat_model_source": threat.source,
        "n_examples": n_examples,
        "clean_acc": None,
        "pgd20_acc": None,
        "autoattack_acc": None,
        "worst_case_acc": None,
        "per_class": None,
        "invariance_cos": None,
        "precision": precision,
        **results,
        "atzoo_version": __version__,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # What the numbers were measured on (by content) and where they came from.
        "dataset_identity": dataset_identity(bundle, trained_on=meta.get("dataset_identity")),
        "provenance": evaluation_provenance(meta),
    }
    payload["flags"] = masking_flags(payload)
    return payload


# --------------------------------------------------------------------------- loading a run


def load_run_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the exported model of a run: ``(plain nn.Module in eval mode, meta)``.

    Args:
        path: a run directory (``model.safetensors`` + ``model_meta.json``) or a
            ``.safetensors`` file with ``<stem>_meta.json`` (or ``model_meta.json``)
            beside it.

    Raises:
        CheckpointError: a file is missing or unreadable, or the weights do not fit the
            architecture named in the meta (one line: missing/unexpected keys, shapes).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from atzoo.models import create_model
    from atzoo.models.timm_models import weights_target

    weights, meta_path = _run_files(Path(path))
    meta = _read_meta(meta_path)
    try:
        model = create_model(meta["model"], meta["num_classes"], meta.get("in_channels", 3),
                             normalize=bool(meta.get("normalize", False)), mean=meta.get("mean"),
                             std=meta.get("std"))
    except KeyError as exc:
        raise CheckpointError(f"{meta_path} lacks the key {exc.args[0]!r}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {weights}: {exc}") from None
    target = weights_target(model, state)  # a timm run's file holds timm's own keys
    _check_state(target, state, weights, meta)
    target.load_state_dict(state, strict=True)
    return model.eval(), meta


def _run_files(path: Path) -> tuple[Path, Path]:
    """(weights, meta json) for a run directory or a ``.safetensors`` file."""
    if not path.exists():
        raise CheckpointError(f"{path} not found (give a run directory or a model .safetensors file)")
    if path.is_dir():
        weights, meta = path / "model.safetensors", path / "model_meta.json"
    elif path.suffix == ".safetensors":
        weights = path
        meta = path.with_name(f"{path.stem}_meta.json")
        if not meta.is_file():
            meta = path.with_name("model_meta.json")
    else:
        raise CheckpointError(f"{path} is neither a run directory nor a .safetensors file")
    for needed in (weights, meta):
        if not needed.is_file():
            raise CheckpointError(f"{needed} not found (a run directory holds model.safetensors and model_meta.json)")
    return weights, meta


#: model_meta.json keys and their types (checked before a model is built from them).
_META_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "num_classes": (int,), "in_channels": (int,), "image_size": (int,), "normalize": (bool,),
    "mean": (list,), "std": (list,), "method": (str,), "dataset": (str,), "weights": (str,),
}


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = read_json_file(path, "model meta")
    except AtzooError as exc:  # a binary or damaged file is no meta
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    for key, kinds in _META_TYPES.items():
        value = meta.get(key)
        wrong_type = value is not None and (not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)))
        if wrong_type or (key in ("num_classes", "in_channels") and value is not None and not 1 <= value <= 100_000):
            raise CheckpointError(f"{path} is damaged: '{key}' is {brief(value)}; a run's model_meta.json holds "
                                  f"a {kinds[0].__name__} there")
    for key in ("mean", "std"):
        values = meta.get(key)
        if values is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise CheckpointError(f"{path} is damaged: '{key}' must be a list of numbers, got {brief(values)}")
        if values is not None and not all(math.isfinite(v) and (key == "mean" or v > 0) for v in values):
            # A NaN or zero std makes every input NaN: chance accuracy would be reported as a result.
            kind = "finite numbers" if key == "mean" else "finite positive numbers"
            raise CheckpointError(f"{path} is damaged: '{key}' must be {kind}, got {brief(values)}")
    return meta


def check_finite_model(model: nn.Module, what: str) -> None:
    """Refuses a model with a NaN or infinite weight or buffer (normalisation statistics,
    BatchNorm running variance): its accuracy would be chance, reported as a result.

    Called before any file of an evaluation is written.

    Raises:
        CheckpointError: naming ``what`` and the first non-finite tensor.
    """
    from atzoo.models.weights import all_finite

    bad = all_finite({**dict(model.named_parameters()), **dict(model.named_buffers())})
    if bad is not None:
        raise CheckpointError(f"{what}: '{bad}' holds non-finite values (NaN or inf); refusing to evaluate a "
                              "model whose outputs are not numbers")


def _check_state(model: nn.Module, state: dict[str, Tensor], weights: Path, meta: dict[str, Any]) -> None:
    """One-line CheckpointError when ``state`` does not fit ``model``."""
    expected = model.state_dict()
    bad = compare_state_dicts(expected, state)
    if bad is None:
        return
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in bad.wrong_shape]
    problems = [f"{len(keys)} {what} ({_few(keys)})" for keys, what in (
        (bad.missing, "missing keys"), (bad.unexpected, "unexpected keys"), (shapes, "shape mismatches")) if keys]
    raise CheckpointError(
        f"{weights} does not match model '{meta.get('model')}' with {meta.get('num_classes')} classes: "
        + "; ".join(problems)
    )


def _few(items: list[str], k: int = 3) -> str:
    return ", ".join(items[:k]) + (", ..." if len(items) > k else "")
