"""The built wheel works on its own: cards, recipes and the API without the source tree.

The wheel is built from a copy of the source files, installed (``--no-deps``) into a fresh
virtual environment, and run from an empty folder. The fresh environment sees the
dependencies (torch, timm, ...) of the environment running the tests through a ``.pth``
file that lists its site-packages, added only after the install, so that pip never sees
(or touches) the test environment's own atzoo. That ``.pth`` line adds a plain folder:
``.pth`` files inside it (an editable install's finder) are not processed, so neither the
source tree nor an editable atzoo is importable there.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "atzoo", "zoo_cards", "recipes")


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args}: {proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """(bin folder of the fresh venv, its environment, an empty working folder)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(src, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(root / "dist"), str(source)], root, env)
    wheel = next((root / "dist").glob("atzoo-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], root, env)
    fresh_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           root, env).stdout.strip())
    (fresh_site / "zz_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    work = root / "work"
    work.mkdir()
    return venv / "bin", env, work


def test_wheel_carries_cards_recipes_and_cli(installed: tuple[Path, dict[str, str], Path]) -> None:
    bin_dir, env, work = installed
    python = str(bin_dir / "python")
    where = _run([python, "-c", "import atzoo, json, sys; print(json.dumps([atzoo.__file__, sys.path]))"],
                 work, env).stdout
    module_file, search_path = json.loads(where)
    # the wheel, not the source tree (the dependencies' venv may itself live inside the checkout)
    assert module_file.startswith(str(bin_dir.parent))
    assert all((work / entry).resolve() != REPO for entry in search_path)
    card = _run([str(bin_dir / "atzoo"), "docs", "arat"], work, env).stdout
    assert "Waseda" in card and "L_AR-AT" in card
    # the settings ledger ships with the package and traces the bundled recipes
    ledger = _run([str(bin_dir / "atzoo"), "docs", "at_awp", "--settings"], work, {**env, "COLUMNS": "1000"}).stdout
    gamma = next(line for line in ledger.splitlines() if "method.gamma" in line)
    assert "0.01" in gamma and "AT_AWP/train_cifar10.py:162" in gamma
    recipes = _run([str(bin_dir / "atzoo"), "list", "recipes"], work, env).stdout
    assert "arat_cifar10_resnet18" in recipes and "ablation/05_split_bn" in recipes

    # a recipe by name: the resolved configuration, printed without creating anything
    printed = _run([str(bin_dir / "atzoo"), "train", "arat", "--recipe", "arat_cifar10_resnet18", "--print-config"],
                   work, env).stdout
    assert "gamma: 30.0  # recipe" in printed and "split_bn: true  # recipe" in printed and not any(work.iterdir())

    # without --recipe, the shipped recipe of (method, dataset, model) is found inside the wheel
    picked = _run([str(bin_dir / "atzoo"), "train", "trades", "--model", "resnet18", "--dataset", "cifar10",
                   "--print-config"], work, env).stdout
    recipe_line = next(line for line in picked.splitlines() if line.startswith("# recipe: "))
    assert recipe_line.endswith("trades_cifar10_resnet18.yaml") and "eps: 0.031  # recipe" in picked

    # a recipe by name, trained with the CLI; then the Python API on that run
    _run([str(bin_dir / "atzoo"), "train", "standard", "--recipe", "standard_cifar10_resnet18", "--dataset", "digits",
          "--model", "small_cnn", "--out", "run", "data.train_subset=128", "run.max_steps=1", "run.trackers=[]",
          "run.evaluate=false"], work, env)
    assert "lr: 0.1" in (work / "run" / "config.yaml").read_text()  # the recipe's optimiser section
    code = ("import atzoo; m = atzoo.load('run'); "
            "print(atzoo.evaluate(m, 'digits', attacks=['clean', 'pgd20'], n_ex=100)['n_examples'])")
    assert _run([python, "-c", code], work, env).stdout.strip() == "100"

    # compare --paper finds the papers' numbers (zoo cards) inside the wheel
    paper_run = work / "runs" / "at-c10"
    paper_run.mkdir(parents=True)
    (paper_run / "eval.json").write_text(json.dumps({
        "method": "at", "model": "resnet18", "dataset": "cifar10", "norm": "linf", "eps": 8 / 255,
        "clean_acc": 82.0, "pgd20_acc": 50.0, "autoattack_acc": 47.0}))
    board = _run([str(bin_dir / "atzoo"), "compare", "runs", "--paper", "--out", "lb"], work, env).stdout
    assert "AT (paper)" in board
