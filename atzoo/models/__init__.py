"""Architectures, routed (split) BatchNorm, feature taps and predictor heads."""


def describe_model(name: str) -> str:
    """One line for ``atzoo list models``."""
    from atzoo.registry import MODELS

    obj = MODELS.get(name)
    return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""
