"""Adversarial-training methods, one file each, registered in ``METHODS``.

Importing this package registers every built-in method.
"""

from atzoo.methods import at, standard  # noqa: F401  (registration side effects)
from atzoo.methods import arat, asym_trades  # noqa: F401  (registration side effects)
from atzoo.methods import arrest, lbgat, mart, trades  # noqa: F401  (registration side effects)
from atzoo.methods import at_awp, trades_awp  # noqa: F401  (registration side effects)
from atzoo.methods import fgsm_rs, free_at, grad_align, n_fgsm  # noqa: F401  (registration side effects)
from atzoo.methods.base import (
    EpochContext,
    LossOutput,
    Method,
    MethodContext,
    ModelFacts,
    StandardModel,
    StepContext,
    create_method,
    proxy_copy,
)

__all__ = ["EpochContext", "LossOutput", "Method", "MethodContext", "ModelFacts", "StandardModel", "StepContext",
           "create_method", "proxy_copy"]
