"""AR-AT: Waseda et al., "Rethinking Invariance Regularization in Adversarial Training to
Improve Robustness-Accuracy Trade-off", ICLR 2025.

Loss (paper Eq. for L_AR-AT, every component a config toggle)::

    a * CE(f(x'), y) + b * CE(f_aux(x), y) + gamma * (1/L) sum_l Dist(h_l(z'_l), sg(z_l))

* ``z'_l`` / ``z_l``: ReLU + global-average-pooled outputs of the ``L`` tapped layers for the
  adversarial input (main, ``adv`` BN route) and the clean input (auxiliary branch).
* ``stop_grad``: ``sg`` detaches the clean target (the paper's L_V1); off, the invariance
  loss also pulls the clean representation (the symmetric L_V0).
* ``predictor``: ``h_l`` is a SimSiam-style MLP ``Linear(d, d/4, bias=False) -> BN1d ->
  ReLU -> Linear(d/4, d)``, one per tapped layer, applied to the adversarial features only
  and trained by the same optimiser (L_V2); off, ``h_l`` is the identity.
* ``split_bn``: every BatchNorm gets an ``adv`` (main) and a ``clean`` (auxiliary) route;
  ``f_aux`` is the clean route (L_V3). Both branches share ONE forward pass through the
  ``split`` route on ``cat([x', x])``. Off, ``f_aux`` is ``f`` itself and the two inputs
  take two separate passes through the same BNs (as the official code does).
* ``auto_balance``: ``a_t = Acc_{t-1}``, ``b_t = 1 - Acc_{t-1}`` with ``Acc_{t-1}`` the
  clean accuracy of ``f_aux`` (eval mode) on the first ~1000 training samples, measured at
  the start of every epoch *including the first* (so epoch 1 of a fresh run uses about
  ``a = 1/K``, as in the official code, which measures before each epoch). Off: fixed
  ``a = alpha``, ``b = beta``. Before any measurement (``compute_loss`` called outside the
  engine) the fixed ``alpha``/``beta`` are used.
* ``Dist``: ``cosine`` is ``1 - mean_i cos(u_i, v_i)`` (official default); ``l2`` is the
  mean squared error ``mean_{i,k} (u_ik - v_ik)^2`` (the official code's ``mse`` metric).
* ``gamma``: 30 for ResNet-18 and PreAct-ResNet-18, 100 for WRN-34-10 and WRN-28-10 (the
  paper uses 30 for ResNet-18 and 100 for WRN-34-10; PreAct-ResNet-18 and WRN-28-10 take the
  value of the closest architecture), 30 for any other model. The reference divides gamma
  by the number of tapped layers, i.e. the regulariser is a mean over layers.

Training adversarial example: CE-PGD-10 on the ``adv`` route with the model in **train**
mode (BN batch statistics, updating the ``adv`` running statistics), as the official code
does; ``attack.bn_mode=eval`` gives the other. The deployed model is the ``adv`` route
exported as a plain network.

``inv_naive`` is the all-off preset (the paper's L_V0: symmetric cosine invariance loss,
no predictor, shared BN, fixed CE weights).

Deviations from the official code: the two branches share one concatenated forward pass
when split-BN is on (mathematically the same per-route batch statistics); auto-balance
measures on the unaugmented first ~1000 training samples that the engine provides rather
than on the first 1000 augmented samples of a shuffled loader.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.attacks.mode import attack_mode
from atzoo.config import MethodConfig, RunConfig
from atzoo.errors import ConfigError
from atzoo.methods.base import EpochContext, LossOutput, Method, MethodContext
from atzoo.models import default_tap_patterns, expand_tap_patterns
from atzoo.models.predictor import build_predictor
from atzoo.models.routed_bn import bn_route, convert_to_routed_bn, export_route, has_routed_bn
from atzoo.models.taps import FeatureTaps, resolve_tap_names
from atzoo.registry import METHODS

#: The invariance weight per architecture (the paper's values; see the module docstring).
GAMMA_BY_MODEL: dict[str, float] = {
    "resnet18": 30.0,
    "preact_resnet18": 30.0,
    "wrn34_10": 100.0,
    "wrn28_10": 100.0,
}
DEFAULT_GAMMA = 30.0


def default_gamma(model_name: str) -> float:
    """The AR-AT invariance weight for ``model_name`` (30 for models the paper did not use)."""
    return GAMMA_BY_MODEL.get(model_name, DEFAULT_GAMMA)


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class TwoBranchConfig(MethodConfig):
    """Fields shared by AR-AT and Asym-TRADES: the clean/adversarial two-branch set-up.

    Attributes:
        stop_grad: detach the clean branch in the regulariser.
        split_bn: separate ``adv``/``clean`` BatchNorm routes (clean = auxiliary branch).
        auto_balance: CE weights ``a = Acc``, ``b = 1 - Acc`` from the auxiliary branch's
            clean accuracy at the start of each epoch.
        alpha: weight of ``CE(f(x'), y)`` when ``auto_balance`` is off.
        beta: weight of ``CE(f_aux(x), y)`` when ``auto_balance`` is off.
        calibration_samples: samples (over all processes) for the auto-balance accuracy.
        official_inplace_start: reproduce a quirk of the official ``attacks.py``
            (``adv_bx = bx.detach(); adv_bx += U(-eps, eps)``), which writes the attack's
            random start into the caller's clean batch: the clean branch and the ``sg(z)``
            targets then see ``x + U(-eps, eps)`` (unclamped) and PGD projects around that
            noisy batch (up to 2 eps from ``x``). Off by default: atzoo follows the paper's
            equations, which use the clean ``x``. For exact-reproduction studies only.
    """

    stop_grad: bool = True
    split_bn: bool = True
    auto_balance: bool = True
    alpha: float = 1.0
    beta: float = 1.0
    calibration_samples: int = 1000
    official_inplace_start: bool = False

    def validate(self) -> None:
        for key in ("alpha", "beta"):
            value = getattr(self, key)
            if value < 0:
                raise ConfigError(f"method.{key} must be >= 0, got {value}")
        if self.calibration_samples < 1:
            raise ConfigError(f"method.calibration_samples must be >= 1, got {self.calibration_samples}")
        gamma = getattr(self, "gamma", None)
        if gamma is not None and gamma < 0:
            raise ConfigError(f"method.gamma must be >= 0, got {gamma}")


@dataclass(frozen=True)
class ARATConfig(TwoBranchConfig):
    """AR-AT hyper-parameters (paper defaults); see the module docstring for each term.

    Attributes:
        predictor: SimSiam-style predictor on the adversarial features.
        layers: tap patterns (``layer4.0.bn1``, ``layer4.*relu*``) or names of the
            architecture's tap sets (``default``; ResNet-18 also ``block_output``); ``None``:
            the default set (``atzoo.models.default_tap_patterns``; ResNet-18: the official
            scripts' ``layer4.{0,1}.bn{1,2}``).
        gamma: invariance weight; ``None``: 30 (ResNet-18), 100 (WRN-34-10/28-10), else 30.
        distance: ``cosine`` (``1 - mean cos``) or ``l2`` (mean squared error).
    """

    name: str = "arat"
    predictor: bool = True
    layers: Optional[list[str]] = None
    gamma: Optional[float] = None
    distance: Literal["cosine", "l2"] = "cosine"

    def resolve(self, run: RunConfig) -> "ARATConfig":
        if self.gamma is not None:
            return self
        return dataclasses.replace(self, gamma=default_gamma(run.model.name))

    def validate(self) -> None:
        super().validate()
        if self.layers is not None and not self.layers:
            raise ConfigError("method.layers must name at least one layer pattern, or be null for the default set")


@dataclass(frozen=True)
class InvNaiveConfig(ARATConfig):
    """The paper's L_V0: symmetric invariance loss, no predictor, shared BN, fixed weights."""

    name: str = "inv_naive"
    stop_grad: bool = False
    predictor: bool = False
    split_bn: bool = False
    auto_balance: bool = False


# --------------------------------------------------------------------------- loss pieces


def feature_distance(u: Tensor, v: Tensor, kind: str = "cosine") -> Tensor:
    """``Dist(u, v)`` of two ``(B, d)`` feature batches (AR-AT Eq. for L_inv).

    Args:
        u: adversarial-branch features (after the predictor, if any).
        v: clean-branch target (detached by the caller under stop-grad).
        kind: ``cosine`` -> ``1 - mean_i cos(u_i, v_i)``; ``l2`` -> ``mean (u - v)^2``.
    """
    u, v = u.float(), v.float()
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(u, v, dim=1, eps=1e-6).mean()
    if kind == "l2":
        return F.mse_loss(u, v)
    raise ConfigError(f"unknown distance '{kind}'. Valid choices: cosine, l2")


def weighted_ce(logits_adv: Tensor, logits_clean: Tensor, y: Tensor, a: float, b: float) -> dict[str, Tensor]:
    """The two classification parts ``a * CE(f(x'), y)`` and ``b * CE(f_aux(x), y)``."""
    return {
        "ce_adv": a * F.cross_entropy(logits_adv.float(), y),
        "ce_clean": b * F.cross_entropy(logits_clean.float(), y),
    }


def invariance_parts(
    feats_adv: dict[str, Tensor],
    feats_clean: dict[str, Tensor],
    predictors: dict[str, nn.Module] | None,
    *,
    gamma: float,
    stop_grad: bool,
    distance: str,
) -> dict[str, Tensor]:
    """``align/<layer>`` = ``gamma / L * Dist(h_l(z'_l), sg(z_l))`` for each tapped layer.

    The parts sum to the regulariser ``gamma * mean_l Dist(...)``. The predictor (if any)
    sees the adversarial features only.
    """
    n_layers = len(feats_adv)
    parts: dict[str, Tensor] = {}
    for name, z_adv in feats_adv.items():
        z_clean = feats_clean[name]
        target = z_clean.detach() if stop_grad else z_clean
        pred = predictors[name](z_adv) if predictors is not None else z_adv
        parts[f"align/{name}"] = (gamma / n_layers) * feature_distance(pred, target, distance)
    return parts


def mean_cosines(feats_adv: dict[str, Tensor], feats_clean: dict[str, Tensor]) -> dict[str, float]:
    """``cos/<layer>``: mean per-sample cosine similarity of ``z'_l`` and ``z_l`` (logged).

    One device-to-host copy for all layers, so logging costs a single synchronisation.
    """
    if not feats_adv:
        return {}
    with torch.no_grad():
        cos = torch.stack([
            F.cosine_similarity(z.float(), feats_clean[n].float(), dim=1, eps=1e-6).mean() for n, z in feats_adv.items()
        ])
    return {f"cos/{n}": value for n, value in zip(feats_adv, cos.tolist())}


def predictor_key(layer: str) -> str:
    """A ``ModuleDict`` key for a tapped module name (module keys cannot contain dots)."""
    return layer.replace(".", "__")


# --------------------------------------------------------------------------- shared method


class TwoBranchMethod(Method):
    """What AR-AT and Asym-TRADES share: split-BN routing, the two CE terms, auto-balance,
    the train-mode CE-PGD on the ``adv`` route, and export of the ``adv`` route.

    Subclasses implement :meth:`compute_loss` with :meth:`forward_branches` and
    :meth:`classification_parts`.
    """

    config: TwoBranchConfig
    attack_defaults: ClassVar[dict[str, Any]] = {"bn_mode": "train", "random_start": "uniform"}
    #: prefix of the scalars returned by :meth:`on_epoch_start`.
    log_prefix: ClassVar[str] = "arat"

    def __init__(self, config: MethodConfig, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        # Clean accuracy of the auxiliary branch at the last epoch start (None: not measured).
        self.aux_clean_acc: float | None = None

    # ------------------------------------------------------------------ building
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Converts every BatchNorm into a routed (``adv``/``clean``) BN when split-BN is on."""
        if self.config.split_bn:
            if not has_routed_bn(model):
                convert_to_routed_bn(model, routes=("adv", "clean"))
        return model

    @property
    def adv_route(self) -> str | None:
        """BN route of the main (deployed) branch; ``None`` without split-BN."""
        return "adv" if self.config.split_bn else None

    @property
    def attack_route(self) -> str | None:
        """The training attack's (and the deployed model's) route: :attr:`adv_route`."""
        return self.adv_route

    @property
    def aux_route(self) -> str | None:
        """BN route of the auxiliary branch ``f_aux``; ``None`` (= the model itself) without split-BN."""
        return "clean" if self.config.split_bn else None

    # ------------------------------------------------------------------ each step
    def attack(self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, y: Tensor) -> Tensor:
        """CE-PGD on the main branch (``adv`` route), train mode by default (official code).

        With ``method.official_inplace_start`` the random start is first added to ``x`` in
        place, as the official code does (see :class:`TwoBranchConfig`); the loss then sees
        the noisy batch as its clean input.
        """
        if self.config.official_inplace_start:
            return self.official_inplace_attack(model, x, y)
        return self.training_pgd(model, x, y, loss="ce", route=self.adv_route)

    def official_inplace_attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The official attack: ``x += U(-eps, eps)`` in place (unclamped), then PGD from and
        around that noisy batch without a further random start."""
        attack = self.ctx.attack
        with torch.no_grad():
            x.add_(torch.empty_like(x).uniform_(-attack.eps, attack.eps))
        settings = {**attack.settings, **({"random_start": "none"} if "random_start" in attack.settings else {})}
        return dataclasses.replace(attack, settings=settings)(model, x, y, loss="ce", route=self.adv_route)

    def ce_weights(self) -> tuple[float, float]:
        """``(a, b)``: auto-balanced from the last measurement, else the fixed ``alpha``, ``beta``."""
        if self.config.auto_balance and self.aux_clean_acc is not None:
            return self.aux_clean_acc, 1.0 - self.aux_clean_acc
        return self.config.alpha, self.config.beta

    def classification_parts(self, logits_adv: Tensor, logits_clean: Tensor, y: Tensor) -> dict[str, Tensor]:
        """``ce_adv`` and ``ce_clean`` with the current weights."""
        a, b = self.ce_weights()
        return weighted_ce(logits_adv, logits_clean, y, a, b)

    def forward_branches(
        self, model: nn.Module, x: Tensor, x_adv: Tensor, taps: FeatureTaps | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Logits and tapped features of the main branch on ``x'`` and the auxiliary on ``x``.

        With split-BN, one pass of ``cat([x', x])`` through the ``split`` route (first half
        ``adv`` BN, second half ``clean`` BN); the tapped features of that pass are split
        the same way. Without it, two passes through the shared BNs (clean first, as the
        official code orders them).

        Returns:
            ``(logits_adv, logits_clean, feats_adv, feats_clean)``; the feature dicts are
            empty when ``taps`` is None.
        """
        if self.config.split_bn:
            n = x_adv.shape[0]
            with bn_route(model, "split"):
                logits = model(torch.cat([x_adv, x]))
            feats = dict(taps.features) if taps is not None else {}
            feats_adv = {k: v[:n] for k, v in feats.items()}
            feats_clean = {k: v[n:] for k, v in feats.items()}
            return logits[:n], logits[n:], feats_adv, feats_clean
        logits_clean = model(x)
        feats_clean = dict(taps.features) if taps is not None else {}
        logits_adv = model(x_adv)
        feats_adv = dict(taps.features) if taps is not None else {}
        return logits_adv, logits_clean, feats_adv, feats_clean

    # ------------------------------------------------------------------ hooks
    def on_epoch_start(self, ctx: EpochContext) -> dict[str, float]:
        """Auto-balance: measures the auxiliary branch's clean accuracy (eval mode).

        Runs on this process's share of the engine's calibration samples (at most
        ``calibration_samples`` over all processes), sums correct/total over processes,
        and sets ``a = acc``, ``b = 1 - acc`` for the epoch.
        """
        if not self.config.auto_balance:
            return {}
        acc = self.measure_aux_accuracy(ctx)
        if acc is None:
            return {}
        self.aux_clean_acc = acc
        a, b = self.ce_weights()
        p = self.log_prefix
        return {f"{p}/a": a, f"{p}/b": b, f"{p}/aux_clean_acc": acc}

    def measure_aux_accuracy(self, ctx: EpochContext) -> float | None:
        """Clean accuracy of ``f_aux`` on the calibration batches; ``None`` if there are none."""
        limit = math.ceil(self.config.calibration_samples / _world_size())
        counts: Tensor | None = None
        seen = 0
        with torch.no_grad(), attack_mode(ctx.model, "eval", self.aux_route):
            for x, y in ctx.calibration_batches():
                if seen >= limit:
                    break
                x, y = x[: limit - seen], y[: limit - seen]
                pred = ctx.model(x).argmax(dim=1)
                batch = torch.stack([(pred == y).sum(), torch.tensor(y.numel(), device=y.device)]).float()
                counts = batch if counts is None else counts + batch
                seen += y.numel()
        if counts is None:
            counts = torch.zeros(2, device=_model_device(ctx.model))
        correct, total = ctx.all_reduce_sum(counts).tolist()
        return correct / total if total > 0 else None

    def state_dict(self) -> dict[str, Any]:
        """The auto-balance accuracy, so a resumed run continues with the same weights."""
        return {"aux_clean_acc": self.aux_clean_acc}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        acc = state.get("aux_clean_acc")
        self.aux_clean_acc = None if acc is None else float(acc)

    def export(self, model: nn.Module) -> nn.Module:
        """The deployable network: the ``adv`` route as a plain model (split-BN), else ``model``."""
        if has_routed_bn(model):
            return export_route(model, "adv")
        return model


def _world_size() -> int:
    """Number of training processes (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


# --------------------------------------------------------------------------- AR-AT


@METHODS.register("arat")
class ARAT(TwoBranchMethod):
    """AR-AT: ``a CE(f(x'), y) + b CE(f_aux(x), y) + gamma mean_l Dist(h_l(z'_l), sg(z_l))``."""

    config_class = ARATConfig
    config: ARATConfig
    regularizers = ("align",)  # gamma mean_l Dist(h_l(z'_l), sg(z_l)), one part per layer
    summary = "AR-AT (Waseda et al. 2025): asymmetric invariance loss, predictor, split-BN, auto-balance"

    @classmethod
    def paper_defaults(cls, model: str) -> dict[str, dict[str, Any]]:
        """The paper's and the official code's settings: CE-PGD-10, eps 8/255, step 2/255,
        uniform start, train mode; SGD lr 0.1 (0.02 during epoch 1), momentum 0.9, wd 5e-4,
        batch 128, 100 epochs, x0.1 from 0-based epochs 76 and 91 (the official ``CustomLR``,
        futakw/AR-AT train_ARAT.py:340-374, is stepped after each 1-based epoch with that
        epoch's number: 1-based epochs 77-91 train at 0.01, 92-100 at 0.001); SWA (when on)
        every 500 steps from 0-based epoch 75 (the ARAT+SWA scripts pass ``--swa_start 76``,
        checked as ``swa_start <= epoch`` on 1-based epochs, train_ARAT.py:191)."""
        return {
            "attack": {"norm": "linf", "eps": 8 / 255, "step_size": 2 / 255, "steps": 10, "random_start": "uniform",
                       "bn_mode": "train"},
            "optim": {"epochs": 100, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "piecewise",
                      "milestones": [76, 91], "warmup_epochs": 1, "warmup_lr": 0.02},
            "averaging": {"swa_start_epoch": 75, "swa_every_steps": 500},
        }

    def __init__(self, config: MethodConfig, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        self.tap_names: list[str] | None = None

    def tap_patterns(self) -> list[str]:
        """The configured layer patterns, or the architecture's default AR-AT tap set."""
        if self.config.layers:
            return expand_tap_patterns(self.ctx.model.name, self.config.layers)
        return list(default_tap_patterns(self.ctx.model.name))

    def resolve_taps(self, model: nn.Module) -> list[str]:
        """Module names of the tapped layers (AtzooError if a pattern matches nothing)."""
        if self.tap_names is None:
            self.tap_names = list(resolve_tap_names(model, self.tap_patterns()))
        return self.tap_names

    def build_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """One predictor per tapped layer, sized by a dry forward (eval mode, no grad).

        The dry forward runs on a batch of two probe images through the ``adv`` route in
        eval mode, so no BN running statistic changes.
        """
        names = self.resolve_taps(model)
        if not self.config.predictor:
            return {}
        dims = tap_dims(model, names, self.ctx.model.in_channels, route=self.adv_route)
        return {"predictors": nn.ModuleDict({predictor_key(n): build_predictor(dims[n]) for n in names})}

    def predictors(self, modules: nn.ModuleDict | dict[str, nn.Module]) -> dict[str, nn.Module] | None:
        """``{layer name: predictor}``, or ``None`` when the predictor is off."""
        if not self.config.predictor:
            return None
        if "predictors" not in modules:
            raise ConfigError("AR-AT with method.predictor=true needs the modules from build_modules()")
        heads = modules["predictors"]
        assert self.tap_names is not None, "build_modules() resolves the taps first"
        return {n: heads[predictor_key(n)] for n in self.tap_names}

    def compute_loss(
        self, model: nn.Module, modules: nn.ModuleDict, x: Tensor, x_adv: Tensor | None, y: Tensor
    ) -> LossOutput:
        assert x_adv is not None, "AR-AT needs the adversarial batch"
        names = self.resolve_taps(model)
        with FeatureTaps(model, names, pooled=True) as taps:
            logits_adv, logits_clean, feats_adv, feats_clean = self.forward_branches(model, x, x_adv, taps)
        parts = self.classification_parts(logits_adv, logits_clean, y)
        parts.update(
            invariance_parts(
                feats_adv, feats_clean, self.predictors(modules),
                gamma=float(self.config.gamma),  # resolved per model by ARATConfig.resolve
                stop_grad=self.config.stop_grad, distance=self.config.distance,
            )
        )
        a, b = self.ce_weights()
        stats = {"a": a, "b": b}
        stats.update(mean_cosines(feats_adv, feats_clean))
        return LossOutput(parts=parts, logits=logits_adv, stats=stats)


@METHODS.register("inv_naive")
class InvNaive(ARAT):
    """The paper's L_V0: ``CE(f(x'), y) + CE(f(x), y) + gamma mean_l (1 - cos(z'_l, z_l))``."""

    config_class = InvNaiveConfig
    summary = "naive invariance regularisation (AR-AT's L_V0): symmetric, no predictor, shared BN"


def tap_dims(model: nn.Module, names: list[str], in_channels: int | None, route: str | None) -> dict[str, int]:
    """Feature dimension of each tapped layer, from a no-grad eval-mode forward of a probe batch."""
    probe = probe_input(model, in_channels)
    with torch.no_grad(), attack_mode(model, "eval", route), FeatureTaps(model, names, pooled=True) as taps:
        model(probe)
        return {n: int(taps.features[n].shape[1]) for n in names}


def probe_input(model: nn.Module, in_channels: int | None, batch: int = 2) -> Tensor:
    """A small batch of images the model accepts, for discovering feature sizes.

    Channels: the ``model.in_channels`` setting, else the first convolution's input
    channels. Size: a timm network's configured input size, else 32 (atzoo's own
    architectures pool adaptively, so any size works and the pooled widths do not
    depend on it).
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = in_channels or (conv.in_channels if conv is not None else 3)
    timm_cfg = next((m.pretrained_cfg for m in model.modules() if getattr(m, "pretrained_cfg", None)), {})
    timm_size = timm_cfg.get("input_size")
    size = int(timm_size[-1]) if timm_size else 32
    param = next(model.parameters())
    return torch.rand(batch, channels, size, size, device=param.device, dtype=param.dtype)
