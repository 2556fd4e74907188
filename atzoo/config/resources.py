"""Where the zoo cards and recipes live: the source checkout, or inside the installed package.

The top-level ``zoo_cards/`` and ``recipes/`` folders of the repository are the source of
truth. ``pyproject.toml`` maps them into the wheel as the data-only packages
``atzoo/zoo_cards`` and ``atzoo/recipes`` (``[tool.setuptools.package-dir]``), so an
installed atzoo carries them. At run time a source checkout (or an editable install,
whose package folder is the checkout's) reads the top-level folders, and an installed
wheel reads its own copies.

``$ATZOO_RECIPES`` names a folder that replaces the bundled recipes (:func:`recipes_dir`).

Recipes are addressed by name: ``arat_cifar10_resnet18`` is ``recipes/arat_cifar10_resnet18.yaml``,
``ablation/05_split_bn`` is ``recipes/ablation/05_split_bn.yaml``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from atzoo.errors import ConfigError

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # atzoo/ (this file is atzoo/config/resources.py)


def resource_dir(name: str) -> Path:
    """The folder ``name`` (``zoo_cards`` or ``recipes``): the checkout's, else the package's.

    A checkout is recognised by the ``pyproject.toml`` beside the package folder; an
    installed wheel has none there (its ``site-packages`` holds other packages only).
    """
    checkout = _PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    return _PACKAGE_DIR / name


#: Environment variable naming a folder that replaces the bundled recipes everywhere.
RECIPES_ENV = "ATZOO_RECIPES"


def recipes_dir() -> Path:
    """The one folder of recipes: ``$ATZOO_RECIPES`` if set, else the bundled ``recipes/``.

    Every recipe lookup goes through here (``atzoo list recipes``, ``--recipe NAME``, the
    default recipe of ``atzoo train METHOD``), so a folder named by the variable is seen by
    all of them or by none.
    """
    env = os.environ.get(RECIPES_ENV)
    return Path(env) if env else resource_dir("recipes")


def list_recipes() -> list[str]:
    """Every recipe of :func:`recipes_dir` by name (``arat_cifar10_resnet18``, ``ablation/05_split_bn``), sorted."""
    folder = recipes_dir()
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))


def find_recipe(recipe: str | Path) -> Path:
    """A recipe file from a path or a bundled recipe's name.

    An existing file wins; otherwise ``recipe`` (with or without ``.yaml``, with or
    without a leading ``recipes/``) names a bundled recipe.

    Raises:
        ConfigError: neither a file nor a bundled recipe; the message names the closest
            recipe and says where to see them all.
    """
    path = Path(recipe)
    if path.is_file():
        return path
    name = path.as_posix().removeprefix("recipes/").removesuffix(".yaml")
    bundled = recipes_dir() / f"{name}.yaml"
    if name and ".." not in Path(name).parts and bundled.is_file():
        return bundled
    close = difflib.get_close_matches(name, list_recipes(), n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"recipe file not found: {recipe} (neither a file nor a bundled recipe).{hint} "
                      "See 'atzoo list recipes'")
