"""Checks of a run's settings that need torch, the evaluator or the data, all made before
the run directory is created or ``--force`` moves anything (see docs/reliability.md).

:func:`atzoo.config.validate` checks ranges when the config is built; what it cannot
check alone is here: values torch itself refuses (the optimizer's), the evaluation that
follows training (attack names, threat model, AutoAttack settings), and, once the data
is loaded, whether AutoAttack's losses fit the dataset's classes.
"""

from __future__ import annotations

from typing import Any

import torch

from atzoo.config import RunConfig
from atzoo.errors import ConfigError


def check_settings(cfg: RunConfig) -> None:
    """Everything about ``cfg`` that can be checked without data (no side effects).

    Raises:
        ConfigError: one line naming the setting.
    """
    check_optimizer(cfg)
    if cfg.run.evaluate:
        check_evaluation(cfg, None)


def check_optimizer(cfg: RunConfig) -> None:
    """Builds the SGD optimizer on a dummy parameter: torch's own checks (negative
    momentum, Nesterov without momentum, ...) run now instead of at step 0.

    The schedule is not built here: its length needs the data (a one-cycle schedule
    needs enough optimizer steps, and a 3-epoch run on a small dataset has them, which
    ``steps_per_epoch=1`` would deny). The trainer builds it with the real number of
    steps per epoch before anything is written, and its error names the schedule.
    """
    from atzoo.engine.schedules import SCHEDULES

    o = cfg.optim
    try:
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=o.lr, momentum=o.momentum,
                        nesterov=o.nesterov, weight_decay=o.weight_decay)
    except ValueError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"torch.optim.SGD refuses optim.momentum={o.momentum}, optim.nesterov={o.nesterov}, "
                          f"optim.weight_decay={o.weight_decay}: {reason}") from None
    if o.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}")


def check_evaluation(cfg: RunConfig, bundle: Any | None, aa_attacks: list[str] | None = None) -> None:
    """The evaluation's attacks, threat model and AutoAttack settings (and, with the
    data, AutoAttack's class requirements)."""
    from atzoo.attacks.autoattack import check_autoattack_args, check_autoattack_classes
    from atzoo.eval.evaluator import ThreatModel, parse_attacks, parse_threat_models

    attacks = parse_attacks(cfg.eval.attacks)
    threat = ThreatModel.resolve(cfg.eval, cfg.attack, bundle if bundle is not None else cfg.data.name)
    parse_threat_models(cfg.eval.threat_models, threat)  # a bad entry fails before training
    if "aa" not in attacks:
        return
    check_autoattack_args(threat.norm, threat.eps, cfg.eval.aa_version, aa_attacks)
    if bundle is not None:
        check_autoattack_classes(cfg.eval.aa_version, aa_attacks, bundle.num_classes, cfg.data.name)
