"""Attacks shared by training and evaluation: PGD, FGSM, the AutoAttack adapter.

Every attack keeps the same contract (torchattacks style): images in [0, 1], runs on the
unwrapped model, gradients with respect to the input only, model mode and BN route set
for the attack and restored afterwards, results detached inside the eps-ball and [0, 1].
See :mod:`atzoo.attacks.pgd`.

Importing this package registers the attacks in :data:`atzoo.registry.ATTACKS`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from atzoo.attacks.autoattack import AA_ATTACKS, AA_VERSIONS, AutoAttackResult, run_autoattack
from atzoo.attacks.mode import attack_mode, frozen_parameters, unwrap_model
from atzoo.attacks.pgd import LOSSES, NORMS, STARTS, fgsm, input_gradient, noisy_fgsm, pgd
from atzoo.attacks.registered import Attack, BatchAttack, batch_attack_names, build_attack
from atzoo.config.threat import ThreatModel
from atzoo.registry import ATTACKS

__all__ = [
    "AA_ATTACKS", "AA_VERSIONS", "Attack", "AutoAttackResult", "BatchAttack", "LOSSES", "NORMS", "STARTS", "ThreatModel",
    "attack_mode", "batch_attack_names", "build_attack", "fgsm", "frozen_parameters", "input_gradient", "noisy_fgsm",
    "pgd", "pgd20", "run_autoattack",
    "unwrap_model",
]


def pgd20(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf", **kwargs: Any) -> Tensor:
    """PGD-20 on CE from a uniform random start (step 2/255 L-inf, eps/4 L2): the eval attack."""
    step_size = kwargs.pop("step_size", None) or (2 / 255 if norm == "linf" else eps / 4)
    return pgd(model, x, y, eps=eps, step_size=step_size, steps=20, norm=norm, random_start="uniform",
               loss="ce", **kwargs)


def fgsm_rs(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, **kwargs: Any) -> Tensor:
    """RS-FGSM (Wong et al. 2020): uniform random start, one step of 1.25 * eps."""
    return fgsm(model, x, y, eps=eps, random_start=True, **kwargs)


# One-line descriptions for ``atzoo list attacks``.
pgd.summary = "PGD (Madry et al. 2018): L-inf/L2, uniform/normal/no start, restarts, CE/KL/targeted loss"
pgd20.summary = "PGD-20 on CE, random start, step 2/255 (L-inf) or eps/4 (L2): the evaluation attack"
fgsm.summary = "FGSM (Goodfellow et al. 2015): one signed step of eps"
fgsm_rs.summary = "RS-FGSM (Wong et al. 2020): uniform random start, one step of 1.25 * eps"
run_autoattack.summary = "reference AutoAttack (standard/plus/rand/custom), sharded over processes, resumable"

# The run settings each attack is given (atzoo.attacks.registered): FGSM's step is its own
# (eps, or 1.25 eps with the random start), not the run's PGD step size or start.
fgsm.takes = fgsm_rs.takes = ("eps", "norm")
pgd20.takes = ("eps", "norm", "step_size")
run_autoattack.per_batch = False  # a whole subset at once: evaluation only, as ``aa``

ATTACKS.add("pgd", pgd)
ATTACKS.add("pgd20", pgd20)
ATTACKS.add("fgsm", fgsm)
ATTACKS.add("fgsm_rs", fgsm_rs)
ATTACKS.add("autoattack", run_autoattack)
