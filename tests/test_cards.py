"""Zoo cards: one per registered method, defaults equal the config dataclass, paper numbers
match the specification's tables, and ``atzoo docs`` renders them."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from atzoo.report.cards import card_names, load_card, load_cards, parse_card
from atzoo.cli import run
from atzoo.errors import AtzooError
from atzoo.registry import METHODS, list_methods

# Clean / AutoAttack (%) from the AR-AT paper's comparison table (Table 3; means of five runs for LBGAT and AR-AT only),
# transcribed from the method specification. Keys: (method card, "<dataset>-<model>").
PAPER_TABLE: dict[tuple[str, str], tuple[float, float]] = {
    ("at", "cifar10-resnet18"): (83.77, 42.42),
    ("trades", "cifar10-resnet18"): (81.25, 48.54),
    ("mart", "cifar10-resnet18"): (82.15, 47.83),
    ("lbgat", "cifar10-resnet18"): (85.00, 48.85),
    ("arat", "cifar10-resnet18"): (87.82, 49.02),
    ("at", "cifar10-wrn34_10"): (86.06, 46.26),
    ("trades", "cifar10-wrn34_10"): (84.33, 51.75),
    ("mart", "cifar10-wrn34_10"): (86.10, 49.11),
    ("lbgat", "cifar10-wrn34_10"): (88.19, 52.56),
    ("arat", "cifar10-wrn34_10"): (90.89, 50.77),
    ("at", "cifar100-resnet18"): (55.82, 19.50),
    ("trades", "cifar100-resnet18"): (54.74, 23.60),
    ("mart", "cifar100-resnet18"): (54.54, 26.04),
    ("lbgat", "cifar100-resnet18"): (65.87, 23.19),
    ("arat", "cifar100-resnet18"): (67.51, 23.38),
    ("at", "cifar100-wrn34_10"): (59.83, 23.94),
    ("trades", "cifar100-wrn34_10"): (57.61, 26.88),
    ("mart", "cifar100-wrn34_10"): (57.75, 24.89),
    ("lbgat", "cifar100-wrn34_10"): (68.17, 26.92),
    ("arat", "cifar100-wrn34_10"): (72.51, 24.18),
    ("at", "imagenette-resnet18"): (84.58, 52.25),
    ("trades", "imagenette-resnet18"): (79.21, 53.98),
    ("mart", "imagenette-resnet18"): (84.07, 59.89),
    ("lbgat", "imagenette-resnet18"): (80.80, 50.42),
    ("arat", "imagenette-resnet18"): (88.66, 59.28),
    # ARREST's own numbers, as copied into the AR-AT paper
    ("arrest", "cifar10-resnet18"): (86.63, 46.14),
    ("arrest", "cifar10-wrn34_10"): (90.24, 50.20),
    ("arrest", "cifar100-wrn34_10"): (73.05, 24.32),
    # Asym-TRADES table
    ("asym_trades", "cifar10-resnet18"): (85.62, 48.58),
    # AWP: the official repository's AutoAttack tables (released checkpoints, 2020-10-13)
    ("at_awp", "cifar10-wrn34_10"): (85.36, 53.97),
    ("at_awp", "cifar100-wrn34_10"): (60.38, 28.86),
    ("trades_awp", "cifar10-wrn34_10"): (85.36, 56.17),
    ("trades_awp", "cifar100-wrn34_10"): (60.17, 28.80),
}

# Variant rows: (card, label, setting) -> (clean, robust, robust metric)
PAPER_VARIANTS: dict[tuple[str, str, str], tuple[float, float, str]] = {
    # L2 (AR-AT paper Table 14, AutoAttack L2 at eps 128/255)
    ("arat", "AR-AT (L2, Table 14)", "cifar10-resnet18"): (92.10, 68.25, "autoattack"),
    ("arat", "AR-AT (L2, Table 14)", "cifar100-resnet18"): (73.86, 37.92, "autoattack"),
    ("at", "AT* (L2, Table 14)", "cifar10-preact_resnet18"): (88.91, 65.93, "autoattack"),
    ("at", "AT* (L2, Table 14)", "cifar100-preact_resnet18"): (60.50, 35.27, "autoattack"),
    ("arat", "AR-AT+SWA", "cifar10-resnet18"): (86.44, 50.34, "autoattack"),
    ("arat", "AR-AT+SWA", "cifar10-wrn34_10"): (90.17, 54.45, "autoattack"),
    ("arat", "AR-AT+SWA", "cifar100-resnet18"): (67.13, 24.62, "autoattack"),
    ("arat", "AR-AT+SWA", "cifar100-wrn34_10"): (72.41, 27.15, "autoattack"),
    ("arat", "ablation: none (L_V0)", "cifar10-resnet18"): (82.93, 48.89, "pgd20"),
    ("arat", "ablation: stop-grad", "cifar10-resnet18"): (82.47, 48.57, "pgd20"),
    ("arat", "ablation: predictor", "cifar10-resnet18"): (83.49, 48.22, "pgd20"),
    ("arat", "ablation: stop-grad + predictor", "cifar10-resnet18"): (83.00, 49.14, "pgd20"),
    ("arat", "ablation: split-BN", "cifar10-resnet18"): (84.35, 51.34, "pgd20"),
    ("arat", "ablation: stop-grad + split-BN", "cifar10-resnet18"): (85.51, 51.46, "pgd20"),
    ("arat", "ablation: predictor + split-BN", "cifar10-resnet18"): (84.07, 50.79, "pgd20"),
    ("arat", "ablation: all three", "cifar10-resnet18"): (86.29, 52.40, "pgd20"),
    ("asym_trades", "Asym-TRADES w/o stop-grad", "cifar10-resnet18"): (82.13, 48.97, "autoattack"),
    ("asym_trades", "Asym-TRADES w/o split-BN", "cifar10-resnet18"): (80.90, 49.93, "autoattack"),
    ("inv_naive", "L_V0 (paper ablation, penultimate layer)", "cifar10-resnet18"): (82.93, 48.89, "pgd20"),
}

# Seconds per batch on one A100 relative to AT (CIFAR-10 ResNet-18), from the AR-AT paper.
PAPER_COST = {"at": 1.00, "trades": 1.51, "lbgat": 1.50, "arat": 1.15}


def config_defaults(method: str) -> dict:
    config = METHODS.get(method).config_class()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "name"}


def test_every_registered_method_has_a_card_and_every_card_a_method() -> None:
    assert sorted(list_methods()) == card_names()


@pytest.mark.parametrize("method", list_methods())
def test_card_defaults_equal_the_config_dataclass(method: str) -> None:
    card = load_card(method)
    assert card.name == method
    assert card.defaults == config_defaults(method)


@pytest.mark.parametrize("method", list_methods())
def test_card_front_matter_and_teaching_prose(method: str) -> None:
    card = load_card(method)
    for key in ("title", "paper", "venue", "year", "arxiv", "loss", "threat_model"):
        assert key in card.meta
    assert card.threat_model() == ("linf", pytest.approx(8 / 255))
    body = card.body
    assert body.lstrip().startswith("# ") and len(body.split()) > 250
    assert "```" in body  # the equation
    assert "## Traps" in body
    for key in card.defaults:  # every hyper-parameter is explained
        assert f"`method.{key}`" in body or f"`{key}`" in body, f"{method}: {key} not explained"


def test_paper_numbers_match_the_specification() -> None:
    found = {}
    for card in load_cards().values():
        for result in card.paper_results():
            if not result.when:
                found[(card.name, result.setting)] = (result.clean, result.autoattack)
    assert found == PAPER_TABLE


def test_paper_variants_match_the_specification() -> None:
    found = {}
    for card in load_cards().values():
        for result in card.paper_results():
            if result.when:
                metric = "autoattack" if result.autoattack is not None else "pgd20"
                found[(card.name, result.label, result.setting)] = (result.clean, getattr(result, metric), metric)
    assert found == PAPER_VARIANTS


def test_paper_cost_ratios() -> None:
    found = {c.name: r.cost_vs_at for c in load_cards().values() for r in c.paper_results()
             if r.setting == "cifar10-resnet18" and r.cost_vs_at is not None}
    assert found == PAPER_COST


def test_variant_conditions_name_real_config_keys() -> None:
    from atzoo.config import build_config, config_to_dict
    from atzoo.report.runs import flatten

    for card in load_cards().values():
        keys = set(flatten(config_to_dict(build_config(method={"name": card.name}))))
        for result in card.paper_results():
            assert set(result.when) <= keys, f"{card.name}: {set(result.when) - keys}"


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("name: x\n", r"must begin with a '---' line"),
        ("---\nname: x\n", r"no closing '---'"),
        ("---\nname: [x\n---\n", r"front matter is not valid YAML"),
        ("---\nname: x\ntitle: X\n---\n", r"lacks front-matter key\(s\) paper, venue"),
        ("---\nname: x\ntitle: X\npaper: p\nvenue: v\nyear: 1\narxiv: a\nloss: l\ndefaults: {}\n"
         "reported: {cifar10-resnet18: {clean: high}}\n---\n", r"reported.cifar10-resnet18.clean='high' is not valid"),
    ],
)
def test_malformed_cards_are_one_line_errors(text: str, pattern: str) -> None:
    with pytest.raises(AtzooError, match=pattern) as info:
        parse_card(text, "x.md")
    assert "\n" not in str(info.value)


def test_card_file_name_must_match(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "zoo_cards" / "at.md").read_text()
    (tmp_path / "other.md").write_text(text)
    with pytest.raises(AtzooError, match="declares name 'at'"):
        load_card("other", tmp_path)


def test_docs_renders_a_card(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["docs", "trades"]) == 0
    out = capsys.readouterr().out
    assert "Theoretically Principled Trade-off" in out and "ICML 2019" in out
    assert "cifar10-resnet18: clean 81.25, autoattack 48.54" in out
    assert "Traps" in out and "#" not in out.split("Traps")[0][-3:]  # Markdown rendered, not raw


def test_docs_without_method_lists_cards(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["docs"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in list_methods())


def test_docs_unknown_method_suggests_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["docs", "tradez"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("atzoo: error: unknown method 'tradez'. Did you mean 'trades'? Valid choices: ")


# --------------------------------------------------------------------------- docs/add_a_method.md


def _fenced_blocks(text: str, language: str) -> list[str]:
    import re

    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.S | re.M)


def test_add_a_method_worked_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's code, card and recipe work together as the page says."""
    import importlib.util

    import torch

    from atzoo.config import build_config
    from atzoo.methods import create_method
    from atzoo.models import create_model

    page = (Path(__file__).resolve().parents[1] / "docs" / "add_a_method.md").read_text()
    (code,) = _fenced_blocks(page, "python")
    (card_text,) = _fenced_blocks(page, "markdown")
    (recipe_text,) = _fenced_blocks(page, "yaml")

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # registration undone after the test
    module_file = tmp_path / "alp_example.py"
    module_file.write_text(code)
    spec = importlib.util.spec_from_file_location("alp_example", module_file)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "alp_example", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert "alp" in METHODS

    card = parse_card(card_text, "alp.md")
    assert card.name == "alp" and card.defaults == config_defaults("alp")

    recipe = tmp_path / "alp_cifar10_resnet18.yaml"
    recipe.write_text(recipe_text)
    assert recipe_text.startswith("# atzoo train alp --recipe recipes/alp_cifar10_resnet18.yaml\n")
    cfg = build_config(recipe, ["model.name=small_cnn", "data.name=digits", "attack.steps=2"])
    assert cfg.method.lam == 0.5 and cfg.attack.bn_mode == "eval"

    torch.manual_seed(0)
    method = create_method("alp", cfg)
    model = create_model("small_cnn", num_classes=10, in_channels=1)
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    x_adv = method.attack(model, torch.nn.ModuleDict(), x, y)
    assert (x_adv - x).abs().max() <= cfg.attack.eps + 1e-6
    assert all(p.grad is None for p in model.parameters())
    out = method.compute_loss(model, torch.nn.ModuleDict(), x, x_adv, y)
    assert set(out.parts) == {"ce_clean", "ce_adv", "mse_logits"} and method.is_regularizer("mse_logits")
    clean, adv = model(x), model(x_adv)
    expected = 0.5 * torch.nn.functional.cross_entropy(adv, y) + 0.5 * torch.nn.functional.cross_entropy(clean, y) \
        + 0.5 * ((clean - adv) ** 2).sum(1).mean()
    assert torch.allclose(out.total(), expected, atol=1e-5)
