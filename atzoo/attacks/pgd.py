"""Projected gradient descent (PGD) and FGSM for L-inf and L2 threat models.

PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
ICLR 2018, Eq. 2) iterates

    x'_{t+1} = clip_[0,1]( Proj_{B(x, eps)}( x'_t + alpha * s(grad_x' L(f(x'_t), y)) ) )

with ``s = sign`` for L-inf and ``s(g) = g / ||g||_2`` for L2. FGSM (Goodfellow et al.,
ICLR 2015) is one step of size eps from ``x``; RS-FGSM (Wong et al., "Fast is better
than free", ICLR 2020) starts uniformly in the ball and steps 1.25 * eps.

The contract (as in torchattacks), kept by every function here:

* Threat model: inputs are images in [0, 1]; normalisation is inside the model.
  Results lie inside the eps-ball around ``x`` and inside [0, 1], are detached and have
  the dtype and device of ``x``.
* The attack runs on the unwrapped model (a DDP/DataParallel wrapper is removed).
* Gradients are taken with respect to the input only (``torch.autograd.grad``): no
  parameter ``.grad`` is created or changed and no DDP all-reduce is triggered.
* ``mode`` (``"eval"``/``"train"``) and the BN ``route`` are set for the attack and
  every submodule's mode and the route are restored afterwards (:func:`attack_mode`).
* Under ``torch.autocast`` (an enclosing one, or the attack's own ``precision``) the
  network runs in the autocast dtype, while the loss, the input gradient, the iterate and
  its projection stay float32: the eps-ball and [0, 1] hold exactly, whatever the precision.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.attacks.mode import attack_mode, check_mode
from atzoo.errors import ConfigError
from atzoo.precision import autocast

NORMS: tuple[str, ...] = ("linf", "l2")
STARTS: tuple[str, ...] = ("uniform", "normal", "none")
LOSSES: tuple[str, ...] = ("ce", "ce_sum", "kl", "targeted_ce")

# Guards the L2 normalisations against division by zero (a zero gradient gives no step).
_TINY = 1e-12


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    random_start: str = "uniform",
    start_std: float = 0.001,
    loss: str = "ce",
    clean_probs: Tensor | None = None,
    target: Tensor | None = None,
    restarts: int = 1,
    mode: str = "eval",
    route: str | None = None,
    generator: torch.Generator | None = None,
    precision: str | None = None,
) -> Tensor:
    """PGD adversarial examples for ``(x, y)`` (see the module docstring for the contract).

    Args:
        model: the classifier (logits); wrappers are removed.
        x: clean images in [0, 1], ``(B, C, H, W)``.
        y: labels ``(B,)``.
        eps: radius of the threat model (L-inf or L2 ball).
        step_size: alpha, the step of each iteration.
        steps: number of iterations (>= 1).
        norm: ``"linf"`` or ``"l2"``.
        random_start: ``"uniform"`` in the eps-ball (Madry), ``"normal"``
            (``x + start_std * N(0, I)``, TRADES/MART), or ``"none"``.
        start_std: standard deviation of the normal start.
        loss: ``"ce"`` (mean cross-entropy), ``"ce_sum"``, ``"kl"`` (TRADES:
            ``KL(clean_probs || p(x'))`` summed over classes, batch mean) or
            ``"targeted_ce"`` (descends ``CE(f(x'), target)``).
        clean_probs: the fixed clean distribution ``p(x)`` for ``loss="kl"``, computed
            once by the caller; it is treated as a constant.
        target: target labels for ``loss="targeted_ce"``.
        restarts: independent runs; per example the run that fools the model is kept
            (among equals, the one with the higher loss). Scoring a run costs one more
            forward pass (which, with ``mode="train"``, also updates BN statistics).
        mode: model mode during the attack, ``"eval"`` or ``"train"``.
        route: BN route of a routed-BN model (``None``: unchanged).
        generator: random generator for the start (reproducible attacks).
        precision: autocast of the attack's forward/backward passes (``fp32``, ``bf16``,
            ``fp16``; see :mod:`atzoo.precision`); ``None`` keeps the caller's autocast state.

    Returns:
        The adversarial images, detached, with the dtype and device of ``x``.

    Raises:
        ConfigError: an argument is out of range or a loss lacks its extra input.
    """
    _validate(x, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start,
              start_std=start_std, loss=loss, clean_probs=clean_probs, target=target, restarts=restarts)
    check_mode(mode)
    x0 = x.detach().float()
    probs = clean_probs.detach().float() if clean_probs is not None else None
    with attack_mode(model, mode, route) as net, _precision(precision, x.device):
        best: Tensor | None = None
        best_score: tuple[Tensor, Tensor] | None = None
        for _ in range(restarts):
            x_adv = _start(x0, eps, norm, random_start, start_std, generator)
            for _ in range(steps):
                grad = _input_gradient(net, x_adv, y, loss, probs, target)
                x_adv = _project(_ascent_step(x_adv, grad, step_size, norm), x0, eps, norm)
            if restarts == 1:
                best = x_adv
                break
            score = _restart_score(net, x_adv, y, loss, probs, target)
            best, best_score = _keep_better(best, best_score, x_adv, score)
    assert best is not None
    return best.detach().to(dtype=x.dtype)


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    random_start: bool = False,
    step_size: float | None = None,
    mode: str = "eval",
    route: str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FGSM (Goodfellow et al. 2015), or RS-FGSM (Wong et al. 2020) with ``random_start``.

    One gradient step on the mean cross-entropy, projected onto the eps-ball and [0, 1].
    The step defaults to ``eps`` (FGSM) or ``1.25 * eps`` (RS-FGSM, the paper's choice).
    Same contract as :func:`pgd`.
    """
    if step_size is None:
        step_size = 1.25 * eps if random_start else eps
    return pgd(
        model, x, y, eps=eps, step_size=step_size, steps=1, norm=norm,
        random_start="uniform" if random_start else "none", loss="ce", mode=mode, route=route,
        generator=generator,
    )


def input_gradient(
    model: nn.Module, x: Tensor, y: Tensor, *, mode: str = "eval", route: str | None = None,
) -> Tensor:
    """``grad_x CE(f(x), y)`` (mean cross-entropy), float32, detached.

    The gradient an FGSM step takes, for methods that need the gradient itself and not
    only the step (GradAlign's alignment term, Andriushchenko & Flammarion 2020, Eq. 6).
    Same contract as :func:`pgd`: input gradient only, mode and route restored.
    """
    check_mode(mode)
    with attack_mode(model, mode, route) as net:
        return _input_gradient(net, x.detach().float(), y, "ce", None, None)


def noisy_fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    noise: float,
    clip: float | None = None,
    mode: str = "eval",
    route: str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """N-FGSM (de Jorge et al., "Make Some Noise", NeurIPS 2022, Alg. 1), L-inf only.

    ``x' = clip_[0,1](x + eta + step_size * sign(grad_x CE(f(x + eta), y)))`` with
    ``eta ~ U[-noise, noise]^d`` (the paper: ``noise = 2 * eps``, ``step_size = eps``).

    **Training only: this breaks the eps-ball part of the module contract on purpose.**
    With ``clip=None`` (the paper's default, ``--clip -1``) the perturbation is *not*
    projected back to the eps-ball and may reach ``noise + step_size`` (``3 * eps``);
    ``clip=c`` clamps it to ``[-c, c]`` (``c = eps`` gives a projected variant). The result
    stays inside [0, 1], is detached and has the dtype and device of ``x``.
    """
    checks = [
        (math.isfinite(eps) and eps > 0, f"eps must be > 0, got {eps!r}"),
        (math.isfinite(step_size) and step_size > 0, f"step_size must be > 0, got {step_size!r}"),
        (math.isfinite(noise) and noise >= 0, f"noise must be >= 0, got {noise!r}"),
        (clip is None or (math.isfinite(clip) and clip > 0), f"clip must be > 0 or None, got {clip!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    check_mode(mode)
    x0 = x.detach().float()
    eta = (2 * torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) - 1) * noise
    start = (x0 + eta).clamp(0, 1)
    with attack_mode(model, mode, route) as net:
        grad = _input_gradient(net, start, y, "ce", None, None)
    delta = _ascent_step(start, grad, step_size, "linf") - x0
    if clip is not None:
        delta = delta.clamp(-clip, clip)
    return (x0 + delta).clamp(0, 1).detach().to(dtype=x.dtype)


# --------------------------------------------------------------------------- pieces


def _validate(
    x: Tensor, *, eps: float, step_size: float, steps: int, norm: str, random_start: str,
    start_std: float, loss: str, clean_probs: Tensor | None, target: Tensor | None, restarts: int,
) -> None:
    """Raises ConfigError (one line) for any argument out of range."""
    _choice("norm", norm, NORMS)
    _choice("random_start", random_start, STARTS)
    _choice("loss", loss, LOSSES)
    checks = [
        (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0, f"eps must be > 0, got {eps!r}"),
        (norm != "linf" or eps <= 1, f"L-inf eps must be in (0, 1] for images in [0, 1], got {eps!r}"),
        (isinstance(step_size, (int, float)) and step_size > 0, f"step_size must be > 0, got {step_size!r}"),
        (isinstance(steps, int) and steps >= 1, f"steps must be an integer >= 1, got {steps!r}"),
        (isinstance(restarts, int) and restarts >= 1, f"restarts must be an integer >= 1, got {restarts!r}"),
        (random_start != "normal" or start_std > 0, f"start_std must be > 0, got {start_std!r}"),
        (loss != "kl" or clean_probs is not None, "loss 'kl' needs clean_probs (the clean softmax p(x))"),
        (loss != "targeted_ce" or target is not None, "loss 'targeted_ce' needs target labels"),
        (x.dim() >= 2, f"x must be a batch (B, ...), got shape {tuple(x.shape)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _precision(precision: str | None, device: torch.device) -> Any:
    """The attack's autocast context; ``None``: leave the enclosing autocast state alone."""
    return nullcontext() if precision is None else autocast(precision, device)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"attack {name} must be one of {', '.join(choices)}, got {value!r}")


def _per_example_norm(t: Tensor) -> Tensor:
    """L2 norm of each example, shaped to broadcast against ``t``."""
    flat = t.flatten(1).norm(p=2, dim=1)
    return flat.view(-1, *([1] * (t.dim() - 1)))


def _start(x0: Tensor, eps: float, norm: str, kind: str, std: float, gen: torch.Generator | None) -> Tensor:
    """The starting point: ``x``, uniform in the ball, or ``x + std * N(0, I)``."""
    if kind == "none":
        return x0.clone()
    if kind == "normal":
        noise = std * torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        return _project(x0 + noise, x0, eps, norm)
    if norm == "linf":
        delta = (2 * torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype) - 1) * eps
    else:
        # Uniform in the L2 ball: a uniform direction times eps * U^(1/d).
        direction = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        direction = direction / (_per_example_norm(direction) + _TINY)
        u = torch.rand((x0.shape[0],), generator=gen, device=x0.device, dtype=x0.dtype)
        radius = eps * u.pow(1.0 / x0[0].numel())
        delta = direction * radius.view(-1, *([1] * (x0.dim() - 1)))
    return (x0 + delta).clamp(0, 1)


def _objective(
    logits: Tensor, y: Tensor, loss: str, clean_probs: Tensor | None, target: Tensor | None, reduction: str
) -> Tensor:
    """The quantity the attack *ascends*, in float32; ``reduction`` "mean"/"sum"/"none".

    For ``"kl"`` the per-example value is ``sum_k p_k(x) (log p_k(x) - log p_k(x'))``;
    ``"mean"`` then divides by the batch size (batchmean).
    """
    logits = logits.float()
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction=reduction)
    if loss == "ce_sum":
        return F.cross_entropy(logits, y, reduction="sum" if reduction == "mean" else reduction)
    if loss == "targeted_ce":
        return -F.cross_entropy(logits, target, reduction=reduction)
    per_example = F.kl_div(F.log_softmax(logits, dim=1), clean_probs, reduction="none").sum(dim=1)
    return per_example if reduction == "none" else per_example.sum() / (
        per_example.shape[0] if reduction == "mean" else 1
    )


def _input_gradient(
    net: nn.Module, x_adv: Tensor, y: Tensor, loss: str, clean_probs: Tensor | None, target: Tensor | None
) -> Tensor:
    """d objective / d x_adv via ``torch.autograd.grad``: parameters get no ``.grad``."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        value = _objective(net(x_adv), y, loss, clean_probs, target, reduction="mean")
        (grad,) = torch.autograd.grad(value, x_adv)
    return grad.detach().float()


def _ascent_step(x_adv: Tensor, grad: Tensor, step_size: float, norm: str) -> Tensor:
    """One steepest-ascent step for the norm: sign for L-inf, normalised gradient for L2."""
    if norm == "linf":
        return x_adv + step_size * grad.sign()
    return x_adv + step_size * grad / (_per_example_norm(grad) + _TINY)


def _project(x_adv: Tensor, x0: Tensor, eps: float, norm: str) -> Tensor:
    """Projects onto the eps-ball around ``x0``, then onto [0, 1].

    Clipping to [0, 1] after the ball projection never leaves the ball: ``x0`` is in
    [0, 1], so clipping only moves coordinates towards ``x0``.
    """
    delta = x_adv - x0
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / (_per_example_norm(delta) + _TINY)).clamp(max=1.0)
    return (x0 + delta).clamp(0, 1).detach()


@torch.no_grad()
def _restart_score(
    net: nn.Module, x_adv: Tensor, y: Tensor, loss: str, clean_probs: Tensor | None, target: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(fooled, loss) per example: fooled first, then the higher loss wins."""
    logits = net(x_adv).float()
    pred = logits.argmax(dim=1)
    fooled = pred.eq(target) if loss == "targeted_ce" else pred.ne(y)
    return fooled, _objective(logits, y, loss, clean_probs, target, reduction="none")


def _keep_better(
    best: Tensor | None, best_score: tuple[Tensor, Tensor] | None, x_adv: Tensor, score: tuple[Tensor, Tensor]
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Per example, keeps the iterate with the better (fooled, loss) score."""
    if best is None or best_score is None:
        return x_adv, score
    fooled, value = score
    best_fooled, best_value = best_score
    better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (value > best_value))
    mask = better.view(-1, *([1] * (x_adv.dim() - 1)))
    return torch.where(mask, x_adv, best), (fooled | best_fooled, torch.where(better, value, best_value))
