"""Run configuration: the config dataclasses, recipe lookup and the bundled resources.

* :mod:`atzoo.config.schema` -- :class:`RunConfig` and its sections, YAML in and out,
  ``key=value`` overrides, the one resolution of a run's values with each value's source.
* :mod:`atzoo.config.resources` -- where ``zoo_cards/`` and ``recipes/`` live (the checkout's,
  the installed wheel's, or ``$ATZOO_RECIPES`` for recipes): :func:`recipes_dir`,
  :func:`list_recipes`, :func:`find_recipe`.
* :mod:`atzoo.config.recipes` -- the default recipe of a ``(method, dataset, model)``.

The names below are the package's public surface (``from atzoo.config import RunConfig``).
"""

from __future__ import annotations

from atzoo.config.schema import (
    SCHEDULE_KEYS,
    SECTIONS,
    SOURCES,
    AttackConfig,
    AveragingConfig,
    DataConfig,
    DiagnosticsConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    Resolution,
    RunConfig,
    RunSection,
    annotated_yaml,
    apply_overrides,
    build_config,
    build_method_config,
    coerce,
    config_from_dict,
    config_to_dict,
    from_yaml,
    load_recipe,
    merge,
    method_config_class,
    method_paper_defaults,
    parse_override,
    read_config_file,
    resolve,
    resolve_attack,
    resolve_config,
    scale_schedule,
    to_yaml,
    validate,
)

__all__ = [
    "SCHEDULE_KEYS", "SECTIONS", "SOURCES", "AttackConfig", "AveragingConfig", "DataConfig",
    "DiagnosticsConfig", "EvalConfig", "MethodConfig", "ModelConfig", "OptimConfig", "Resolution",
    "RunConfig", "RunSection", "annotated_yaml", "apply_overrides", "build_config",
    "build_method_config", "coerce", "config_from_dict", "config_to_dict", "from_yaml", "load_recipe",
    "merge", "method_config_class", "method_paper_defaults", "parse_override", "read_config_file",
    "resolve", "resolve_attack", "resolve_config", "scale_schedule", "to_yaml", "validate",
]
