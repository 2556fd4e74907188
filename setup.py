"""Build step: the wheel carries the top-level ``zoo_cards/`` and ``recipes/`` folders.

Metadata lives in ``pyproject.toml``; this file only extends ``build_py`` so that the
folders (the source of truth, kept at the top of the repository) are copied into the
built package as ``atzoo/zoo_cards`` and ``atzoo/recipes``. ``atzoo.config.resources`` finds
them there in an installed wheel and at the top level in a checkout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: Top-level folders copied into the package, with the files they contribute.
RESOURCES: dict[str, str] = {"zoo_cards": "*.md", "recipes": "*.yaml"}


class BuildPyWithResources(build_py):
    """``build_py`` that also copies :data:`RESOURCES` into ``<build_lib>/atzoo/``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's folders directly
            return
        root = Path(__file__).resolve().parent
        for folder, pattern in RESOURCES.items():
            target = Path(self.build_lib) / "atzoo" / folder
            shutil.rmtree(target, ignore_errors=True)
            for source in sorted((root / folder).rglob(pattern)):
                destination = target / source.relative_to(root / folder)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildPyWithResources})
