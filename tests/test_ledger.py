"""The settings ledger: every value of every shipped recipe is traced to a source or marked
as atzoo's choice, and the ledger's value is the value the recipe runs with."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import atzoo.ledger as ledger
from atzoo.ledger import CHOICE, check_recipe, load_ledger, settings_markdown, values_equal

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_every_recipe_value_is_traced(path: Path) -> None:
    """Fails when a recipe key has neither a source nor "atzoo's choice", when the ledger's
    value and the recipe's differ, or when a deviation from the official value has no note."""
    report = check_recipe(path)
    assert report.problems == []
    assert report.rows


def test_every_entry_has_a_source_or_the_choice_mark() -> None:
    for name in ledger.ledger_names() + [ledger.COMMON]:
        for entry in load_ledger(name):
            assert entry.source, f"{name}: {entry.key}"
            assert entry.has_official or CHOICE in entry.source, (
                f"{name}: {entry.key} gives no official value, so it must say \"{CHOICE}\"")


@pytest.fixture
def scratch_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the ledger folder that a test may edit (the loader's cache is cleared)."""
    folder = tmp_path / "ledger"
    shutil.copytree(ledger.LEDGER_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(ledger, "LEDGER_DIR", folder)
    load_ledger.cache_clear()
    yield folder
    load_ledger.cache_clear()


def _edit(folder: Path, method: str, key: str, **changes: object) -> None:
    path = folder / f"{method}.yaml"
    data = yaml.safe_load(path.read_text())
    for entry in data["settings"]:
        if entry["key"] == key and not entry.get("when"):
            entry.update(changes)
            for field, value in changes.items():
                if value is None:
                    entry.pop(field)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_checker_finds_a_missing_entry(scratch_ledger: Path) -> None:
    path = scratch_ledger / "arat.yaml"
    data = yaml.safe_load(path.read_text())
    data["settings"] = [e for e in data["settings"] if e["key"] != "optim.momentum"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    problems = check_recipe(REPO / "recipes/arat_cifar10_resnet18.yaml").problems
    assert problems == ["arat_cifar10_resnet18: optim.momentum = 0.9 has no ledger entry (a source or \"atzoo's choice\")"]


def test_checker_finds_a_missing_source(scratch_ledger: Path) -> None:
    _edit(scratch_ledger, "arat", "optim.lr", source="")
    problems = check_recipe(REPO / "recipes/arat_cifar10_resnet18.yaml").problems
    assert len(problems) == 1 and "optim.lr" in problems[0] and "neither a source" in problems[0]


def test_checker_finds_a_ledger_recipe_mismatch(scratch_ledger: Path, tmp_path: Path) -> None:
    """A recipe edited back to the old milestones, without its ledger, fails."""
    recipe = yaml.safe_load((REPO / "recipes/arat_cifar10_resnet18.yaml").read_text())
    recipe["optim"]["milestones"] = [75, 90]
    edited = tmp_path / "arat_cifar10_resnet18.yaml"
    edited.write_text(yaml.safe_dump(recipe))
    problems = check_recipe(edited).problems
    assert len(problems) == 1
    assert "optim.milestones" in problems[0] and "[76, 91]" in problems[0] and "[75, 90]" in problems[0]


def test_checker_finds_an_unexplained_deviation(scratch_ledger: Path) -> None:
    _edit(scratch_ledger, "at_awp", "method.gamma", official=0.005, note=None)
    problems = check_recipe(REPO / "recipes/at_awp_cifar10_wrn34_10.yaml").problems
    assert len(problems) == 1 and "differs from official" in problems[0]


def test_checker_requires_a_ledger_for_each_method(scratch_ledger: Path) -> None:
    (scratch_ledger / "mart.yaml").unlink()
    problems = check_recipe(REPO / "recipes/mart_cifar10_resnet18.yaml").problems
    assert problems[0].startswith("mart_cifar10_resnet18: no ledger for method 'mart'")


def test_conditioned_entries_pick_the_model_value() -> None:
    rows = {e.key: v for e, v in check_recipe(REPO / "recipes/arat_cifar10_wrn34_10.yaml").rows}
    assert rows["method.gamma"] == 100.0 and rows["method.layers"] == ["block3.*relu*", "pool"]
    rows = {e.key: v for e, v in check_recipe(REPO / "recipes/ablation/01_none.yaml").rows}
    assert rows["method.stop_grad"] is False and rows["eval.attacks"] == ["clean", "pgd20"]


def test_values_compare_as_numbers() -> None:
    assert values_equal("8/255", 8 / 255) and values_equal(128, 128.0) and values_equal([76, 91], [76.0, 91.0])
    assert not values_equal([75, 90], [76, 91]) and not values_equal(None, 0.0) and not values_equal(True, 1.0)


def test_markdown_lists_deviations_with_their_reason() -> None:
    text = settings_markdown(check_recipe(REPO / "recipes/arat_cifar10_resnet18.yaml"))
    assert "| setting | atzoo | official | source | note |" in text
    line = next(l for l in text.splitlines() if l.startswith("| method.official_inplace_start"))
    assert "[deviation]" in line and "paper's equations" in line
    line = next(l for l in text.splitlines() if l.startswith("| optim.milestones"))
    assert "[76, 91]" in line and "train_ARAT.py:340-374" in line


def test_add_a_method_ledger_example_follows_the_format(scratch_ledger: Path) -> None:
    """docs/add_a_method.md's ledger example loads with the real loader, with a source per entry."""
    import re

    page = (REPO / "docs" / "add_a_method.md").read_text()
    (example,) = re.findall(r"^```yaml ledger\n(.*?)^```$", page, flags=re.S | re.M)
    (scratch_ledger / "alp.yaml").write_text(example)
    entries = load_ledger("alp")
    assert [e.key for e in entries] == ["method.lam", "optim.milestones", "optim.milestones", "behaviour.random_start"]
    assert all(e.source for e in entries) and entries[0].is_choice and entries[2].deviates and entries[2].note
