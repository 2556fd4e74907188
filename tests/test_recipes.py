"""Every recipe under recipes/ (recursively) builds a valid config and says how to run it.

A recipe's first line is the command that runs it (``# atzoo train METHOD --recipe PATH``),
torchtune-style; METHOD must be the recipe's ``method.name`` and PATH the file itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from atzoo.engine.plan import make_config
from atzoo.config import build_config, load_recipe
from atzoo.registry import list_datasets, list_methods, list_models

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
COMMAND = re.compile(r"^# atzoo train (?P<method>[a-z_0-9]+) --recipe (?P<path>\S+)\s*$")


def _id(path: Path) -> str:
    return str(path.relative_to(REPO / "recipes"))


def test_there_are_recipes_for_every_method() -> None:
    methods = {load_recipe(p).get("method", {}).get("name") for p in RECIPES}
    assert set(list_methods()) - {"inv_naive"} <= methods  # inv_naive is the ablation's first row (arat)


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_recipe_builds_and_first_line_runs_it(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    match = COMMAND.match(first)
    assert match, f"{_id(path)}: first line must be '# atzoo train METHOD --recipe PATH', got {first!r}"
    assert match["path"] == str(path.relative_to(REPO))
    cfg = build_config(path)
    assert match["method"] == cfg.method.name
    assert cfg.data.name in list_datasets()
    assert cfg.model.name in list_models() or cfg.model.name.startswith("timm:")
    # the command as the CLI builds it: the method argument agrees with the recipe
    assert make_config(match["method"], recipe=path) == cfg


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_recipe_evaluates_under_its_stated_threat_model(path: Path) -> None:
    cfg = build_config(path)
    from atzoo.eval.evaluator import ThreatModel

    threat = ThreatModel.resolve(cfg.eval, cfg.attack, cfg.data.name)
    norm, eps = threat.norm, threat.eps
    if "l2" in path.parts or norm == "l2":
        assert (norm, eps) == ("l2", pytest.approx(128 / 255)) and cfg.attack.step_size == pytest.approx(0.1)
    else:  # every L-inf recipe is compared at 8/255, whatever its training attack
        assert (norm, eps) == ("linf", pytest.approx(8 / 255))


PAPER_SETTINGS = [
    (dataset, model, kind)
    for dataset, model in [("cifar10", "resnet18"), ("cifar10", "wrn34_10"), ("cifar100", "resnet18"),
                           ("cifar100", "wrn34_10"), ("imagenette", "resnet18")]
    for kind in ("standard", "at", "trades", "mart", "lbgat0", "lbgat6", "arrest", "arat")
]


@pytest.mark.parametrize("dataset, model, kind", PAPER_SETTINGS)
def test_every_paper_setting_has_a_recipe(dataset: str, model: str, kind: str) -> None:
    path = REPO / "recipes" / f"{kind}_{dataset}_{model}.yaml"
    assert path.is_file(), f"missing recipe {path.relative_to(REPO)}"
    cfg = build_config(path)
    assert cfg.data.name == dataset
    assert cfg.model.name == model  # Imagenette too: the official code's CIFAR-style ResNet-18
    if kind.startswith("lbgat"):
        assert cfg.method.beta == (0.0 if kind == "lbgat0" else 6.0)


def test_l2_recipes() -> None:
    names = sorted(p.name for p in (REPO / "recipes" / "l2").glob("*.yaml"))
    assert names == ["arat_cifar10_resnet18_l2.yaml", "at_cifar10_resnet18_l2.yaml", "trades_cifar10_resnet18_l2.yaml"]


def test_mart_beta_follows_the_architecture() -> None:
    assert build_config(REPO / "recipes" / "mart_cifar100_resnet18.yaml").method.beta == 5.0
    assert build_config(REPO / "recipes" / "mart_cifar100_wrn34_10.yaml").method.beta == 6.0


# --------------------------------------------------------------------------- commands in the docs

DOCS = sorted((REPO / "docs").rglob("*.md"))


def train_commands(text: str) -> list[str]:
    """Every ``atzoo train ...`` command line in a Markdown text (continuations joined,
    shell variables such as ``$seed`` set to 0)."""
    joined = re.sub(r"\$\{?\w+\}?", "0", re.sub(r"\\\n\s*", " ", text))
    return [line.strip().split("  #")[0].strip() for line in joined.splitlines() if line.strip().startswith("atzoo train ")]


def parse_train(command: str):
    """The RunConfig that ``atzoo train`` builds for ``command``, parsed by the real CLI."""
    import shlex

    import typer

    from atzoo.commands import train as train_module

    app = typer.Typer()
    train_module.register(app)
    click_command = typer.main.get_command(app)
    args = [str(REPO / a) if a.startswith("recipes/") else a for a in shlex.split(command)[2:]]
    params = click_command.make_context("train", args).params
    return make_config(
        params["method"], model=params["model"], dataset=params["dataset"], epochs=params["epochs"],
        batch_size=params["batch_size"], seed=params["seed"],
        recipe=Path(params["recipe"]) if params["recipe"] else None, overrides=params["overrides"],
    )


def test_docs_show_train_commands() -> None:
    assert len([c for doc in DOCS for c in train_commands(doc.read_text())]) >= 25


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO / "docs")))
def test_every_train_command_in_the_docs_builds(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "standard-resnet18-cifar10-s0").mkdir(parents=True)  # ARREST's method.pretrained
    for command in train_commands(doc.read_text()):
        if doc.name == "add_a_method.md" and command.startswith("atzoo train alp"):
            continue  # the worked example's method: tests/test_cards.py registers and checks it
        parse_train(command)


def test_ablation_command_lines_equal_the_ablation_recipes() -> None:
    rows = {build_config(p).run.name: build_config(p) for p in (REPO / "recipes" / "ablation").glob("*.yaml")}
    matched = set()
    for command in train_commands((REPO / "docs" / "teaching" / "05_arat.md").read_text()):
        if "08_all.yaml" in command and "run.name=" in command:
            cfg = parse_train(command)
            if cfg.run.name in rows:
                assert cfg == rows[cfg.run.name], command
                matched.add(cfg.run.name)
    assert len(matched) == 7  # rows 01-07 as switches on row 08


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO / "docs")))
def test_relative_links_in_the_docs_resolve(doc: Path) -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text())
    missing = [t for t in targets if "://" not in t and not (doc.parent / t).exists()]
    assert not missing, f"{doc.name}: broken links {missing}"
