"""Cards and recipes: read from the checkout's top-level folders, recipes by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from atzoo.errors import ConfigError
from atzoo.config.resources import find_recipe, list_recipes, resource_dir

REPO = Path(__file__).resolve().parents[1]


def test_a_checkout_reads_its_top_level_folders() -> None:
    """The top-level folders are the source of truth (also for an editable install)."""
    assert resource_dir("zoo_cards") == REPO / "zoo_cards" and resource_dir("recipes") == REPO / "recipes"


def test_recipes_by_name() -> None:
    names = list_recipes()
    assert len(names) == len(list((REPO / "recipes").rglob("*.yaml")))
    assert {"arat_cifar10_resnet18", "ablation/05_split_bn", "l2/at_cifar10_resnet18_l2"} <= set(names)
    target = REPO / "recipes" / "arat_cifar10_resnet18.yaml"
    for spelling in ("arat_cifar10_resnet18", "arat_cifar10_resnet18.yaml", "recipes/arat_cifar10_resnet18.yaml"):
        assert find_recipe(spelling).resolve() == target
    assert find_recipe("ablation/05_split_bn") == REPO / "recipes" / "ablation" / "05_split_bn.yaml"


def test_a_file_wins_and_unknown_names_get_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "arat_cifar10_resnet18").write_text("optim:\n  lr: 0.05\n")
    assert find_recipe("arat_cifar10_resnet18") == Path("arat_cifar10_resnet18")
    with pytest.raises(ConfigError, match=r"recipe file not found: arat_cifar10_resnet81 .*Did you mean "
                                          r"'arat_cifar10_resnet18'\?.*atzoo list recipes"):
        find_recipe("arat_cifar10_resnet81")
    with pytest.raises(ConfigError, match="recipe file not found"):
        find_recipe("../pyproject")  # names stay inside the recipes folder


def test_cli_trains_from_a_recipe_name(capsys: pytest.CaptureFixture[str]) -> None:
    from atzoo.commands.train import plan_run

    cfg, run_dir = plan_run("arat", recipe=Path("arat_cifar10_resnet18"))
    assert (cfg.data.name, cfg.model.name, run_dir) == ("cifar10", "resnet18", Path("runs/arat-resnet18-cifar10-s0"))


def test_atzoo_recipes_is_the_one_recipes_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$ATZOO_RECIPES`` is seen by every lookup: ``atzoo list recipes``, ``--recipe NAME`` and
    the default recipe of ``atzoo train METHOD`` (once, the last honoured it and the others not)."""
    from typer.testing import CliRunner

    from atzoo.cli import app
    from atzoo.commands.train import plan_run
    from atzoo.config.recipes import default_recipe

    (tmp_path / "my_digits_at.yaml").write_text(
        "method: {name: at}\ndata: {name: digits}\nmodel: {name: small_cnn}\noptim: {lr: 0.0123}\n")
    monkeypatch.setenv("ATZOO_RECIPES", str(tmp_path))
    assert list_recipes() == ["my_digits_at"]
    assert find_recipe("my_digits_at") == tmp_path / "my_digits_at.yaml"
    assert default_recipe("at", "digits", "small_cnn") == tmp_path / "my_digits_at.yaml"
    listed = CliRunner().invoke(app, ["list", "recipes"])
    assert listed.exit_code == 0 and "my_digits_at" in listed.output
    cfg, _ = plan_run("at", recipe=Path("my_digits_at"))
    assert cfg.optim.lr == 0.0123 and cfg.data.name == "digits"
