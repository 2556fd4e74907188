"""atzoo: an adversarial-training zoo for PyTorch.

Every method (standard, AT, TRADES, MART, LBGAT, ARREST, AR-AT, Asym-TRADES) is a
registered :class:`~atzoo.methods.base.Method` sharing one Accelerate training loop, one
attack module and one evaluator. See ``docs/`` for the teaching path.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
