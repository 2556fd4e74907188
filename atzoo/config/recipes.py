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


def read_recipe_values(path: Path) -> object | None:
    """The parsed YAML of a recipe file, or None when it cannot be read as one."""
    from atzoo.errors import AtzooError
    from atzoo.files.safe_read import read_yaml_file  # the one bounded YAML reader (no aliases)

    try:
        return read_yaml_file(path, "recipe") or {}
    except AtzooError:  # not a recipe this lookup can use; --recipe on it gives the error
        return None


def setting_of(values: object) -> tuple[str, str, str] | None:
    """``(method, dataset, model)`` named by parsed recipe values, or None if they name no such triple."""
    names = [(values.get(section) or {}).get("name") if isinstance(values, dict) else None
             for section in ("method", "data", "model")]
    return tuple(names) if all(isinstance(n, str) for n in names) else None  # type: ignore[return-value]


def recipe_setting(path: Path) -> tuple[str, str, str] | None:
    """``(method, dataset, model)`` named by a recipe file, or None if it names no such triple."""
    return setting_of(read_recipe_values(path))


def find_default_recipe(method: str, dataset: str, model: str) -> tuple[Path, dict] | None:
    """The shipped recipe of ``(method, dataset, model)`` with its parsed values, or None.

    Each recipe file is read once; the chosen one's values are returned so that the caller
    need not read it again.
    """
    folder = recipes_dir()
    if not folder.is_dir():
        return None
    matches: list[tuple[Path, dict]] = []
    for path in sorted(folder.glob("*.yaml")):
        values = read_recipe_values(path)
        if setting_of(values) == (method, dataset, model):
            matches.append((path, values))  # type: ignore[arg-type]  (a dict: it names a setting)
    preferred = [m for m in matches if m[0].stem == f"{method}_{dataset}_{model}"]
    return (preferred or matches or [None])[0]


def default_recipe(method: str, dataset: str, model: str) -> Path | None:
    """The shipped recipe of ``(method, dataset, model)``, or None when there is none."""
    found = find_default_recipe(method, dataset, model)
    return found[0] if found is not None else None
