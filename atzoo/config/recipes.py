"""The shipped recipes: which one ``atzoo train METHOD --model M --dataset D`` starts from.

Recipes are those of :func:`atzoo.config.resources.recipes_dir` (a checkout's
``recipes/``, or the copy inside an installed wheel; ``$ATZOO_RECIPES`` overrides the
folder). The recipe of a setting is a top-level ``recipes/*.yaml`` whose ``method.name``,
``data.name`` and ``model.name`` are the command's; sub-folders (``ablation/``, ``l2/``)
hold variants and are only used through ``--recipe``. Where several recipes share a
setting (``lbgat0_*``/``lbgat6_*``, ``arat_*``/``arat_swa_*``), the one named
``<method>_<dataset>_<model>.yaml`` wins, else the first by name (``lbgat0``: the
method's default ``beta = 0``).
"""

from __future__ import annotations

from pathlib import Path

from atzoo.config.resources import recipes_dir


def recipe_setting(path: Path) -> tuple[str, str, str] | None:
    """``(method, dataset, model)`` named by a recipe file, or None if it names no such triple."""
    from atzoo.errors import AtzooError
    from atzoo.files.safe_read import read_yaml_file  # the one bounded YAML reader (no aliases)

    try:
        values = read_yaml_file(path, "recipe") or {}
    except AtzooError:  # not a recipe this lookup can use; --recipe on it gives the error
        return None
    names = [(values.get(section) or {}).get("name") if isinstance(values, dict) else None
             for section in ("method", "data", "model")]
    return tuple(names) if all(isinstance(n, str) for n in names) else None  # type: ignore[return-value]


def default_recipe(method: str, dataset: str, model: str) -> Path | None:
    """The shipped recipe of ``(method, dataset, model)``, or None when there is none."""
    folder = recipes_dir()
    if not folder.is_dir():
        return None
    matches = [p for p in sorted(folder.glob("*.yaml")) if recipe_setting(p) == (method, dataset, model)]
    preferred = [p for p in matches if p.stem == f"{method}_{dataset}_{model}"]
    return (preferred or matches or [None])[0]
