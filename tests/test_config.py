"""Typed configs: YAML round trip, overrides, unknown keys, wrong types, ranges."""

from __future__ import annotations

from pathlib import Path

import pytest

from atzoo.config import (
    RunConfig,
    build_config,
    coerce,
    config_from_dict,
    config_to_dict,
    from_yaml,
    to_yaml,
)
from atzoo.errors import ConfigError


def test_defaults_round_trip_through_yaml() -> None:
    cfg = build_config(method={"name": "at"})
    again = from_yaml(to_yaml(cfg))
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)


def test_recipe_and_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method:\n  name: at\noptim:\n  lr: 0.05\n  milestones: [10, 20]\n")
    cfg = build_config(recipe, ["attack.eps=8/255", "optim.lr=0.2", "data.augment=false", "attack.steps=3"])
    assert cfg.method.name == "at"
    assert cfg.optim.lr == pytest.approx(0.2)
    assert cfg.optim.milestones == [10, 20]
    assert cfg.attack.eps == pytest.approx(8 / 255)
    assert cfg.attack.steps == 3
    assert cfg.data.augment is False
    # round trip of a resolved config
    assert from_yaml(to_yaml(cfg)) == cfg


def test_flags_sit_between_recipe_and_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  name: resnet18\n")
    cfg = build_config(recipe, ["model.name=wrn34_10"], model={"name": "small_cnn"})
    assert cfg.model.name == "wrn34_10"
    cfg = build_config(recipe, [], model={"name": "small_cnn"})
    assert cfg.model.name == "small_cnn"


def test_int_is_accepted_for_float_but_not_the_reverse() -> None:
    cfg = build_config(method={"name": "at"}, optim={"lr": 1})
    assert isinstance(cfg.optim.lr, float)
    with pytest.raises(ConfigError, match=r"optim.epochs expects int, got 1.5"):
        build_config(method={"name": "at"}, optim={"epochs": 1.5})


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("optim.lrr=0.1", r"unknown config key 'optim.lrr'. Did you mean 'optim.lr'\?"),
        ("optm.lr=0.1", r"unknown config key 'optm'. Did you mean 'optim'\?"),
        ("data.augment=maybe", r"data.augment expects bool, got 'maybe'"),
        ("optim.epochs=ten", r"optim.epochs expects int"),
        ("optim.schedule=linear", r"optim.schedule expects one of 'piecewise', 'cosine'"),
        ("attack.eps=0", r"attack.eps must be in \(0, 1\]"),
        ("attack.eps=2", r"attack.eps must be in \(0, 1\]"),
        ("attack.steps=0", r"attack.steps must be >= 1"),
        ("optim.epochs=-1", r"optim.epochs must be >= 1"),
        ("data.batch_size=0", r"data.batch_size must be >= 1"),
        ("method.gamma=3", r"unknown config key 'method.gamma'"),
        ("run.max_steps=0", r"run.max_steps must be >= 1"),
        ("data.num_workers=-1", r"data.num_workers must be >= 0"),
        ("method.name=atx", r"unknown method 'atx'. Did you mean 'at'\?"),
        ("noequals", r"must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError if "method 'atx'" not in pattern else Exception, match=pattern):
        build_config(None, [override], method={"name": "at"})


def test_unknown_section_in_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optimizer:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer'. Did you mean 'optim'\?"):
        build_config(recipe)


def test_recipe_wrong_type_and_bad_yaml(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  milestones: 75\n")
    with pytest.raises(ConfigError, match="optim.milestones expects list of int"):
        build_config(recipe)
    recipe.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(recipe)
    with pytest.raises(ConfigError, match="recipe file not found"):
        build_config(tmp_path / "missing.yaml")


def test_method_defaults_fill_training_attack() -> None:
    cfg = build_config(method={"name": "at"})
    assert cfg.attack.bn_mode == "eval" and cfg.attack.random_start == "uniform"
    cfg = build_config(method={"name": "at"}, attack={"bn_mode": "train"})
    assert cfg.attack.bn_mode == "train"


def test_coerce_fraction_and_lists() -> None:
    assert coerce("8/255", float, "k") == pytest.approx(8 / 255)
    assert coerce("5e-4", float, "k") == pytest.approx(5e-4)  # YAML 1.1 leaves this a string
    cfg = build_config(None, ["optim.weight_decay=5e-4"], method={"name": "at"})
    assert cfg.optim.weight_decay == pytest.approx(5e-4)
    assert coerce("clean,pgd20", list[str], "k") == ["clean", "pgd20"]
    with pytest.raises(ConfigError, match="k expects float"):
        coerce("eight", float, "k")
    with pytest.raises(ConfigError, match="finite"):
        coerce(float("nan"), float, "k")


def test_yaml_boolean_words_for_string_choices() -> None:
    cfg = build_config(None, ["run.precision=no"], method={"name": "at"})
    assert cfg.run.precision == "no"
    with pytest.raises(ConfigError, match="run.precision expects one of"):
        build_config(None, ["run.precision=yes"], method={"name": "at"})


def test_empty_recipe_gives_defaults() -> None:
    cfg = config_from_dict({})
    defaults = RunConfig()
    assert cfg.method.name == "standard" and type(cfg.method).__name__ == "StandardConfig"
    assert (cfg.data, cfg.model, cfg.optim, cfg.run) == (defaults.data, defaults.model, defaults.optim, defaults.run)
