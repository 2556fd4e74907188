"""Suzuki et al., "Adversarial Finetuning with Latent Representation Constraint to Mitigate
Accuracy-Robustness Tradeoff", ICCV 2023 (ARREST).

ARREST adversarially fine-tunes a standard (non-robust) model ``phi`` into ``f_theta``
(``theta`` initialised from ``phi``) with, per batch::

    L = CE(f_theta(x~), y) + gamma * (1/B) * sum_i (1 - cos(z_theta(x~_i), z_phi(x_i)))

where ``z`` is the penultimate (pooled) representation, ``z_phi`` comes from a
**frozen** copy of ``phi`` (eval mode, no gradient), and ``x~`` is the training input
chosen by *noisy replay*: ``x~_i = x'_i`` (CE-PGD) unless the tuned model's clean
representation has drifted, ``cos(z_theta(x_i), z_phi(x_i)) < replay_threshold``, in
which case ``x~_i = clamp01(x_i + u_i)`` with ``u_i`` drawn uniformly from the
training attack's eps-ball.

No official code exists. Every choice the paper does not fix, and atzoo's default:

* ``phi``: ``pretrained`` (a run directory of ``atzoo train standard`` or its
  ``model.safetensors``). Without it, ``pretrain_epochs > 0`` trains ``phi`` first with
  the ``standard`` method (same data, model, seed and optimiser settings, milestones
  scaled to ``pretrain_epochs``) into the sibling run directory ``<run dir>-pretrain``,
  and reuses it when it is there with the same settings. Single-process only: a
  distributed run must pass ``pretrained``.
* Representation ``z``: the penultimate features (``atzoo.models.penultimate_features``).
* Distance: ``1 - cos``, averaged over the batch (the same scale as AR-AT's).
* ``gamma = 10`` (atzoo's choice): once training settles ``1 - cos`` is of order 0.1,
  so the term is of the order of the adversarial CE.
* Noisy-replay test: the cosine between the tuned and the frozen model's clean
  representations, computed per sample at every step in the attack's BN mode without
  gradient; ``replay_threshold = 0.9`` (atzoo's choice); ``-1`` turns replay off.
* Replay noise: ``uniform`` in the training attack's eps-ball (L-inf: each pixel
  ``U(-eps, eps)``; L2: uniform in the ball), clamped to [0, 1]; ``none`` replays
  the clean ``x``.
* The replay decision is made in :meth:`ARREST.attack`, where the model is already
  in the attack's mode, so the train-mode forward of the loss sees only ``x~``.
* Training attack: CE-PGD as in AT (eval mode, uniform start).
* Recipe schedule (``recipes/arrest_cifar10_resnet18.yaml``): the AR-AT comparison
  protocol (100 epochs, lr 0.1, x0.1 at 75 and 90, wd 5e-4) for the fine-tuning.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.config import MethodConfig
from atzoo.errors import CheckpointError, ConfigError
from atzoo.methods.base import LossOutput, Method
from atzoo.registry import METHODS

if TYPE_CHECKING:
    from atzoo.config import RunConfig

#: ``pretrain_epochs`` trains the standard model ``phi`` into ``<ARREST run dir>-pretrain``.
PRETRAIN_SUFFIX = "pretrain"

# --------------------------------------------------------------------------- weights


def read_state_dict(path: str | Path, *, what: str) -> tuple[dict[str, Tensor], Path]:
    """Reads model weights safely from a run directory, ``.safetensors`` or ``.pt`` file.

    A run directory means its ``model.safetensors``. ``.pt``/``.pth`` files load with
    ``weights_only=True``; a leading ``module.`` (``nn.DataParallel``) is stripped.

    Raises:
        CheckpointError: the path is missing, of an unknown kind, or unreadable.
    """
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"{what}: no model weights at {file} (give a run directory or model.safetensors)")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        elif file.suffix in (".pt", ".pth", ".bin"):
            state = torch.load(file, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
                state = state.get("state_dict", state.get("model"))
        else:
            raise CheckpointError(f"{what}: {file} is not a .safetensors, .pt or .pth file")
    except (OSError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what}: cannot read {file}: {first}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{what}: {file} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}, file


def load_weights(module: nn.Module, path: str | Path, *, what: str) -> None:
    """Loads weights into ``module`` after checking that every name and shape matches.

    Raises:
        CheckpointError: one line naming the first mismatch (and the checkpoint's model
            name when its ``model_meta.json`` is present).
    """
    from atzoo.models.timm_models import weights_target

    state, file = read_state_dict(path, what=what)
    module = weights_target(module, state)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        if wrong:
            k = wrong[0]
            detail = f"'{k}' has shape {list(state[k].shape)}, the model needs {list(expected[k].shape)}"
        else:
            detail = f"{len(missing)} missing and {len(unexpected)} unexpected tensors (e.g. "
            detail += f"'{(missing or unexpected)[0]}')"
        raise CheckpointError(f"{what}: {file} does not match the architecture{_meta_hint(file)}: {detail}")
    module.load_state_dict(state)


def _meta_hint(file: Path) -> str:
    meta = file.parent / "model_meta.json"
    try:
        model = json.loads(meta.read_text()).get("model") if meta.is_file() else None
    except (OSError, ValueError):
        model = None
    return f" (it holds a '{model}' model)" if model else ""


# --------------------------------------------------------------------------- loss


def arrest_loss(logits_adv: Tensor, z_adv: Tensor, z_ref: Tensor, y: Tensor, gamma: float) -> dict[str, Tensor]:
    """ARREST loss parts: ``ce_adv = CE(f(x~), y)``, ``rep = gamma * mean(1 - cos(z~, z_phi))``.

    Args:
        logits_adv: logits of the tuned model on the training input ``x~``.
        z_adv: penultimate features of the tuned model on ``x~`` (keeps its graph).
        z_ref: penultimate features of the frozen pretrained model on clean ``x``.
        y: labels ``(B,)``.
        gamma: weight of the representation term.
    """
    cos = F.cosine_similarity(z_adv, z_ref, dim=1)
    return {"ce_adv": F.cross_entropy(logits_adv, y), "rep": gamma * (1.0 - cos).mean()}


def eps_ball_noise(x: Tensor, eps: float, norm: str) -> Tensor:
    """A perturbation drawn uniformly from the L-inf or L2 eps-ball, shaped like ``x``."""
    if norm == "linf":
        return (torch.rand_like(x) * 2 - 1) * eps
    flat = torch.randn_like(x).flatten(1)
    direction = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    radius = eps * torch.rand(x.shape[0], 1, device=x.device, dtype=x.dtype) ** (1.0 / flat.shape[1])
    return (direction * radius).view_as(x)


def noisy_replay(
    x: Tensor, x_adv: Tensor, cos: Tensor, *, threshold: float, eps: float, norm: str, noise: str
) -> tuple[Tensor, Tensor]:
    """Replaces ``x_adv`` by a non-adversarial input where the representation drifted.

    Args:
        x: clean batch; x_adv: its adversarial examples.
        cos: per-sample cosine between the tuned and the pretrained clean representations.
        threshold: replay where ``cos < threshold``.
        eps, norm: the eps-ball the replay noise is drawn from.
        noise: ``"uniform"`` (uniform in the eps-ball) or ``"none"`` (the clean ``x``).

    Returns:
        ``(x_tilde, replayed)``: the training input and the boolean mask of replayed samples.
    """
    replayed = cos < threshold
    clean = x + eps_ball_noise(x, eps, norm) if noise == "uniform" else x
    mask = replayed.view(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, clean.clamp(0, 1), x_adv), replayed


# --------------------------------------------------------------------------- modules


class FrozenReference(nn.Module):
    """A frozen copy of the pretrained model: no gradients, always in eval mode.

    ``train()`` cannot switch it to train mode, so the engine's ``.train()`` on the
    training module leaves its BatchNorm statistics untouched.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(model)
        self.net.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenReference":
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- method


@dataclass(frozen=True)
class ARRESTConfig(MethodConfig):
    """ARREST hyper-parameters (atzoo's defaults; the paper publishes no code).

    Attributes:
        pretrained: the standard model ``phi``: a run directory or ``model.safetensors``.
        pretrain_epochs: without ``pretrained``, train ``phi`` with ``standard`` for
            this many epochs first (0: ``pretrained`` is required).
        gamma: weight of the representation term ``1 - cos(z'(theta), z(phi))``.
        replay_threshold: replay samples whose clean-representation cosine (tuned vs
            pretrained) is below this; in [-1, 1], -1 turns noisy replay off.
        replay_noise: ``uniform`` noise in the eps-ball, or ``none`` (clean input).
    """

    name: str = "arrest"
    pretrained: Optional[str] = None
    pretrain_epochs: int = 100
    gamma: float = 10.0
    replay_threshold: float = 0.9
    replay_noise: Literal["uniform", "none"] = "uniform"

    def validate(self) -> None:
        if self.gamma < 0:
            raise ConfigError(f"method.gamma must be >= 0, got {self.gamma}")
        if not -1.0 <= self.replay_threshold <= 1.0:
            raise ConfigError(f"method.replay_threshold must be in [-1, 1], got {self.replay_threshold}")
        if self.pretrain_epochs < 0:
            raise ConfigError(f"method.pretrain_epochs must be >= 0, got {self.pretrain_epochs}")
        if self.pretrained is not None and not Path(self.pretrained).exists():
            raise ConfigError(
                f"method.pretrained not found: {self.pretrained} "
                "(give the run directory of `atzoo train standard` or its model.safetensors)"
            )
        if self.pretrained is None and self.pretrain_epochs == 0:
            raise ConfigError(
                "arrest fine-tunes a standard model: set method.pretrained (a run directory or "
                "model.safetensors) or method.pretrain_epochs > 0"
            )


@METHODS.register("arrest")
class ARREST(Method):
    """ARREST: adversarial fine-tuning of a standard model with a representation constraint."""

    config_class = ARRESTConfig
    attack_defaults = {"bn_mode": "eval", "random_start": "uniform"}
    summary = "ARREST (Suzuki et al. 2023), fine-tunes a standard model: CE(f(x'), y) + gamma (1 - cos) + noisy replay"
    config: ARRESTConfig

    def __init__(self, config: MethodConfig, run: "RunConfig") -> None:
        super().__init__(config, run)
        self._replayed: Tensor | None = None  # last step's replay mask, for logging only
        # The frozen reference's clean features, computed once per batch: the replay check
        # in attack() needs them and so does the loss; phi never changes, so reuse them.
        self._z_ref: tuple[Tensor, Tensor] | None = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Initialises the model to be tuned with the pretrained standard model ``phi``."""
        source = self.config.pretrained or self._pretrain_standard()
        load_weights(model, source, what="method.pretrained")
        return model

    def build_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """The frozen reference ``phi`` (a copy of the freshly loaded model)."""
        return {"reference": FrozenReference(model)}

    def attack(self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, y: Tensor) -> Tensor:
        from atzoo.attacks import attack_mode
        from atzoo.models import penultimate_features

        x_adv = self.training_pgd(model, x, y, loss="ce")
        if self.config.replay_threshold <= -1.0:  # cos >= -1 always: replay is off
            self._replayed = None
            return x_adv
        with torch.no_grad(), attack_mode(model, self.run.attack.bn_mode or "eval", None):
            z_tuned = penultimate_features(model, x)
        z_ref = self._reference_features(modules, x)
        cos = F.cosine_similarity(z_tuned.float(), z_ref.float(), dim=1)
        a = self.run.attack
        x_tilde, self._replayed = noisy_replay(
            x, x_adv, cos, threshold=self.config.replay_threshold, eps=a.eps, norm=a.norm,
            noise=self.config.replay_noise,
        )
        return x_tilde

    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        from atzoo.models import classify_features, penultimate_features

        assert x_adv is not None, "ARREST needs the adversarial batch"
        z_adv = penultimate_features(model, x_adv)
        logits_adv = classify_features(model, z_adv)
        z_ref = self._reference_features(modules, x)
        self._z_ref = None  # one batch only
        parts = arrest_loss(logits_adv, z_adv, z_ref, y, self.config.gamma)
        stats = {"replay_frac": float(self._replayed.float().mean())} if self._replayed is not None else {}
        return LossOutput(parts=parts, logits=logits_adv, stats=stats)

    def _reference_features(self, modules: nn.ModuleDict, x: Tensor) -> Tensor:
        """``z(phi)`` of the clean batch, reused when the same batch tensor comes back."""
        from atzoo.models import penultimate_features

        cached = self._z_ref
        if cached is not None and _same_tensor(cached[0], x):
            return cached[1]
        with torch.no_grad():
            z_ref = penultimate_features(modules["reference"].net, x)
        self._z_ref = (x, z_ref)
        return z_ref

    # ------------------------------------------------------------------ pretraining
    def _pretrain_standard(self) -> Path:
        """Trains ``phi`` with ``standard`` into :func:`pretrain_dir`, or reuses it.

        A finished ``phi`` trained with the same settings is reused (a resumed or
        ``--force``-replaced ARREST run does not train it again); an interrupted one is
        resumed; one trained with other settings is an error, never silently reused.
        """
        from atzoo.engine import train

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise ConfigError(
                "arrest cannot pretrain phi inside a distributed run: train it first with "
                "`atzoo train standard` and pass method.pretrained=<its run directory>"
            )
        out = pretrain_dir(self.run)
        cfg = pretrain_config(self.run, self.config.pretrain_epochs)
        if not (out / "config.yaml").is_file():  # new (the engine refuses a non-empty non-run folder)
            return train(cfg, out=out)
        check_pretrain_settings(out, cfg)
        if (out / "model.safetensors").is_file():
            return out
        return train(cfg, out=out, resume=True)


def pretrain_dir(run: "RunConfig") -> Path:
    """Where ``pretrain_epochs`` trains ``phi``: ``<ARREST run dir>-pretrain``.

    A sibling, not a sub-directory, so that replacing the ARREST run (``--force``) keeps
    ``phi``; it is an ordinary ``standard`` run directory.
    """
    from atzoo.engine.rundir import resolve_run_dir

    run_dir = resolve_run_dir(run)
    return run_dir.with_name(f"{run_dir.name}-{PRETRAIN_SUFFIX}")


def check_pretrain_settings(out: Path, cfg: "RunConfig") -> None:
    """Raises ConfigError when the run in ``out`` was trained with other settings than ``cfg``."""
    from atzoo.config import from_yaml
    from atzoo.engine.trainer import config_differences

    saved = from_yaml((out / "config.yaml").read_text(), str(out / "config.yaml"))
    differences = config_differences(saved, cfg)
    if saved.run.max_steps != cfg.run.max_steps:
        differences.append("run.max_steps")
    if differences:
        raise ConfigError(
            f"{out} holds a standard model trained with other settings ({', '.join(differences)} differ); "
            "remove it, or pass method.pretrained to fine-tune it anyway"
        )


def pretrain_config(run: "RunConfig", epochs: int) -> "RunConfig":
    """The ``standard`` run that trains ``phi`` for an ARREST run.

    Same data, model, seed, precision and optimiser as the ARREST run, for ``epochs``
    epochs with the milestones scaled to that length; the default (unused) attack
    section, so that ``phi`` does not depend on ARREST's attack; no weight averaging,
    no diagnostics; evaluation (when on) measures clean accuracy only.
    """
    from atzoo.config import AttackConfig, AveragingConfig, DiagnosticsConfig, resolve
    from atzoo.methods.standard import StandardConfig

    scale = epochs / run.optim.epochs
    cfg = copy.deepcopy(run)
    cfg.method = StandardConfig()
    cfg.optim = dataclasses.replace(
        cfg.optim, epochs=epochs, milestones=[round(m * scale) for m in run.optim.milestones],
        warmup_epochs=min(run.optim.warmup_epochs, epochs),
    )
    cfg.attack, cfg.averaging, cfg.diagnostics = AttackConfig(), AveragingConfig(), DiagnosticsConfig()
    cfg.eval = dataclasses.replace(cfg.eval, attacks=["clean"], invariance=False)
    cfg.run = dataclasses.replace(cfg.run, name=None, out=None)
    return resolve(cfg)


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same storage and view (not merely equal values)."""
    return a is b or (
        a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
        and a.dtype == b.dtype and a.device == b.device and a._version == b._version
    )
