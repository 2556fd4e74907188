"""The threat model: one type for training attacks, evaluation, zoo cards, export and reproduce.

A threat model is the set of allowed perturbations -- an ``L_p`` ball of radius ``eps``
around each image in [0, 1] -- plus, for an evaluation, the PGD step size it attacks with.
The evaluator resolves it from the config (:meth:`ThreatModel.resolve`), every bound attack
carries one (:attr:`atzoo.attacks.BatchAttack.threat_model`), a zoo card states
the one its numbers were measured under (``threat_model: {norm: linf, eps: 8/255}``), and
``atzoo export`` names it as RobustBench does (:attr:`ThreatModel.robustbench_name`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atzoo.errors import ConfigError

if TYPE_CHECKING:
    from atzoo.config.schema import AttackConfig, EvalConfig

#: The norms of a threat model.
THREAT_NORMS: tuple[str, ...] = ("linf", "l2")
#: Radius per norm for data that declares no benchmark threat model (the CIFAR benchmark:
#: L-inf 8/255, L2 0.5; the L2 recipes evaluate at 128/255, as the official AR-AT evaluation
#: does, by setting ``eval.eps``).
DEFAULT_EPS: dict[str, float] = {"linf": 8 / 255, "l2": 0.5}
#: Two radii closer than this are the same threat model (floats from YAML/JSON, ``8/255``).
EPS_TOLERANCE = 1e-6
#: RobustBench's names of the norms (``robustbench.eval.benchmark(threat_model=...)``).
ROBUSTBENCH_NAMES: dict[str, str] = {"linf": "Linf", "l2": "L2"}


@dataclass(frozen=True)
class ThreatModel:
    """Norm and radius of the allowed perturbations, and the PGD step size of an evaluation.

    Attributes:
        norm: ``linf`` or ``l2``.
        eps: the radius (images in [0, 1]).
        step_size: the PGD step of an evaluation; ``None`` where no attack is implied (a
            card's reported numbers, an exported model).
        source: where ``eps`` came from (``eval.eps``, the dataset's benchmark); not part of
            the threat model's identity.
    """

    norm: str
    eps: float
    step_size: float | None = None
    source: str = field(default="", compare=False)

    @classmethod
    def resolve(cls, cfg: EvalConfig, attack_cfg: AttackConfig, dataset: Any = None) -> ThreatModel:
        """``cfg.norm`` (else the training attack's) at ``cfg.eps`` (else the dataset's
        benchmark radius for that norm); step 2/255 (L-inf), eps/4 (L2).

        The training eps is never the default: a method trained at 0.031 is measured at the
        dataset's benchmark radius like every other (TRADES at 8/255 on CIFAR), as the AR-AT
        paper's Table 3 and RobustBench measure every method at one threat model.

        Args:
            dataset: a :class:`~atzoo.data.DatasetBundle` (its ``benchmark_eps``), a dataset
                name (what its registration declares) or ``None`` (no declaration).
        """
        norm = cfg.norm or attack_cfg.norm
        if norm not in THREAT_NORMS:
            raise ConfigError(f"eval norm must be one of linf, l2, got {norm!r}")
        eps, source = (cfg.eps, "eval.eps") if cfg.eps is not None else benchmark_eps(dataset, norm)
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and 0 < eps <= 1):
            raise ConfigError(f"eval eps must be in (0, 1], got {eps!r}")
        step = cfg.pgd_step_size or (2 / 255 if norm == "linf" else eps / 4)
        if step <= 0:
            raise ConfigError(f"eval pgd_step_size must be > 0, got {step!r}")
        return cls(norm, float(eps), float(step), source)

    @classmethod
    def of(cls, norm: Any, eps: Any, where: str = "threat model") -> ThreatModel:
        """A threat model from stored values (``eval.json``, ``config.yaml``, a card).

        Raises:
            ConfigError: ``norm`` is not a known norm or ``eps`` not a positive number.
        """
        if norm not in THREAT_NORMS:
            raise ConfigError(f"{where}: norm must be one of {', '.join(THREAT_NORMS)}, got {norm!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ConfigError(f"{where}: eps must be a positive number, got {eps!r}")
        return cls(str(norm), float(eps))

    def matches(self, other: ThreatModel) -> bool:
        """The same perturbation set: the same norm and radii within :data:`EPS_TOLERANCE`."""
        return self.norm == other.norm and math.isclose(self.eps, other.eps, rel_tol=0.0, abs_tol=EPS_TOLERANCE)

    @property
    def label(self) -> str:
        """``linf 8/255`` or ``l2 0.5``."""
        return f"{self.norm} {format_eps(self.eps)}"

    @property
    def robustbench_name(self) -> str:
        """``Linf`` or ``L2``, as RobustBench names the threat model."""
        return ROBUSTBENCH_NAMES[self.norm]

    def attack_settings(self) -> dict[str, Any]:
        """The run settings an evaluation attack gets (20 steps where it has steps, eval start)."""
        return {"eps": self.eps, "norm": self.norm, "step_size": self.step_size, "steps": 20,
                "random_start": "uniform", "start_std": 0.001}

    def pgd_settings(self, steps: int) -> dict[str, Any]:
        return {"steps": steps, "step_size": self.step_size, "loss": "ce", "random_start": "uniform",
                "restarts": 1, "norm": self.norm, "eps": self.eps}


def format_eps(eps: float) -> str:
    """``8/255`` when eps is a whole number of 255ths, else the decimal (``0.031``, ``0.5``)."""
    scaled = eps * 255
    if abs(scaled - round(scaled)) < 1e-4 and round(scaled) >= 1:
        return f"{round(scaled)}/255"
    return f"{eps:g}"


def benchmark_eps(dataset: Any, norm: str) -> tuple[float, str]:
    """(radius, where it comes from) of the benchmark threat model of ``dataset`` for ``norm``:
    declared where the dataset is registered (``@benchmark_threat``), or stored in an
    ``.npz`` file (the bundle's ``benchmark_eps``); else :data:`DEFAULT_EPS`, said so."""
    from atzoo.registry import DATASETS, load_builtins

    if isinstance(dataset, str) or dataset is None:
        if dataset:
            load_builtins()
        # NAME=npz:PATH: a file standing in for NAME is measured at NAME's benchmark
        registered = dataset.partition("=")[0] if dataset and "=" in dataset.split(":", 1)[0] else dataset
        name, declared = dataset, dict(DATASETS.fact(registered, "benchmark_eps") or {}) if registered else {}
    else:
        name, declared = getattr(dataset, "name", "?"), dict(getattr(dataset, "benchmark_eps", None) or {})
    if norm in declared:
        return float(declared[norm]), f"benchmark threat model of {name}"
    where = f"{name} declares no {norm} benchmark" if name else "no dataset given"
    return DEFAULT_EPS[norm], f"atzoo's default ({where}; set eval.eps)"
