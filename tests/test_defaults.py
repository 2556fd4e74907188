"""``atzoo train`` starts from the paper's setting: the shipped recipe of (method, dataset,
model), else the method's own paper defaults; ``--print-config``; schedules that scale."""

from __future__ import annotations

from dataclasses import replace

from pathlib import Path

import pytest

from atzoo.cli import run
from atzoo.engine.plan import announce, resolve_train_config
from atzoo.config import OptimConfig, annotated_yaml, build_config, from_yaml, resolve_config
from atzoo.engine.schedules import lr_factor
from atzoo.config.recipes import default_recipe, recipe_setting
from atzoo.registry import METHODS, list_methods, load_builtins

REPO = Path(__file__).resolve().parents[1]
TOP_RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", TOP_RECIPES, ids=lambda p: p.stem)
def test_command_without_recipe_resolves_to_the_shipped_recipe(path: Path) -> None:
    method, dataset, model = recipe_setting(path)
    chosen = default_recipe(method, dataset, model)
    assert chosen is not None and recipe_setting(chosen) == (method, dataset, model)
    resolution = resolve_train_config(method, model=model, dataset=dataset, auto_recipe=True)
    assert resolution.recipe == chosen
    assert resolution.config == build_config(chosen)
    if chosen != path:  # a variant of the same setting (lbgat6, arat_swa) is picked by --recipe
        assert path.stem.startswith(("lbgat6_", "arat_swa_")) and chosen.stem.startswith(("lbgat0_", "arat_"))
        assert resolve_train_config(method, recipe=path).config == build_config(path)


def test_trades_command_equals_its_recipe_and_not_arat_settings() -> None:
    cfg = resolve_train_config("trades", model="resnet18", dataset="cifar10", auto_recipe=True).config
    assert (cfg.attack.eps, cfg.attack.step_size, cfg.optim.weight_decay, cfg.optim.epochs) == (0.031, 0.007, 2e-4, 76)
    assert cfg.optim.milestones == [74] and cfg.optim.warmup_lr is None


@pytest.mark.parametrize("method", sorted(set(list_methods())))
def test_without_a_recipe_the_method_uses_its_own_paper_defaults(method: str) -> None:
    load_builtins()
    resolution = resolve_train_config(method, model="small_cnn", dataset="digits", auto_recipe=True)
    assert resolution.recipe is None
    declared = METHODS.get(method).paper_defaults("small_cnn")
    assert "optim" in declared  # every method declares its own optimiser
    for section, values in declared.items():
        for key, value in values.items():
            assert getattr(getattr(resolution.config, section), key) == pytest.approx(value), f"{section}.{key}"
            assert resolution.source(f"{section}.{key}") == "method"


def test_mart_defaults_depend_on_the_architecture() -> None:
    resnet = resolve_train_config("mart", model="resnet18", dataset="digits").config.optim
    wrn = resolve_train_config("mart", model="wrn34_10", dataset="digits").config.optim
    assert (resnet.lr, resnet.weight_decay, resnet.epochs) == (0.01, 3.5e-3, 120)
    assert (wrn.lr, wrn.weight_decay, wrn.epochs) == (0.1, 7e-4, 90)


def test_print_config_is_the_recipe_with_sources_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["train", "trades", "--model", "resnet18", "--dataset", "cifar10", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert from_yaml(out) == build_config(REPO / "recipes" / "trades_cifar10_resnet18.yaml")
    assert "  eps: 0.031  # recipe" in out and "  name: cifar10  # flag" in out
    assert list(tmp_path.iterdir()) == []


def test_print_config_shows_milestones_scaled_to_four_epochs(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["train", "at", "--dataset", "digits", "--model", "small_cnn", "--epochs", "4", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "  milestones: [2, 3]  # scaled" in out and "  epochs: 4  # flag" in out
    assert "  steps: 7  # method" in out  # Madry et al.'s CIFAR attack


def test_annotated_yaml_round_trips_with_overrides() -> None:
    resolution = resolve_config(None, ["optim.lr=0.05"], method={"name": "arat"}, data={"name": "digits"})
    text = annotated_yaml(resolution)
    assert from_yaml(text) == resolution.config
    assert "  lr: 0.05  # override" in text and "  weight_decay: 0.0005  # method" in text


def test_announce_names_the_recipe_or_the_paper_defaults() -> None:
    err = announce(resolve_train_config("trades", model="resnet18", dataset="cifar10", auto_recipe=True),
                   explicit=False)
    err += announce(resolve_train_config("mart", model="small_cnn", dataset="digits", epochs=30, auto_recipe=True),
                    explicit=False)
    assert err[0].startswith("using the shipped recipe ") and "trades_cifar10_resnet18.yaml" in err[0]
    assert err[1] == "no shipped recipe for mart on digits with small_cnn; using mart's paper defaults"
    # 89 of 90 epochs is the last epoch: 29 of 30, not rounded past the end (30, never reached)
    assert err[2].startswith("optim.epochs 90 -> 30: scaled in proportion optim.milestones [74, 89] -> [25, 29]")


# --------------------------------------------------------------------------- schedules that scale


def _optim(epochs: int, recipe: str | None = None, overrides: tuple[str, ...] = (), method: str = "arat"):
    path = REPO / "recipes" / recipe if recipe else None
    return resolve_config(path, list(overrides), method={"name": method}, optim={"epochs": epochs})


def test_step_schedule_milestones_scale_and_the_lr_decays() -> None:
    resolution = _optim(30, "arat_cifar10_resnet18.yaml")
    optim = resolution.config.optim
    assert optim.milestones == [23, 27] and resolution.source("optim.milestones") == "scaled"
    factor = lr_factor(optim, steps_per_epoch=10)
    assert factor(22 * 10) == pytest.approx(1.0) and factor(23 * 10) == pytest.approx(0.1)
    assert factor(29 * 10) == pytest.approx(0.01)
    assert resolution.notes == ["optim.epochs 100 -> 30: scaled in proportion optim.milestones [76, 91] -> [23, 27], "
                                "optim.warmup_epochs 1 -> 0.3 (at least min(100 steps, 1 epoch)) "
                                "(give them explicitly to keep other values)"]


def test_explicit_milestones_and_warmup_win() -> None:
    resolution = _optim(30, "arat_cifar10_resnet18.yaml", ("optim.milestones=[10,20]", "optim.warmup_epochs=2"))
    assert resolution.config.optim.milestones == [10, 20] and resolution.config.optim.warmup_epochs == 2
    assert resolution.notes == []


def test_one_epoch_never_decays_from_the_start_and_still_warms_up() -> None:
    resolution = _optim(1, "arat_cifar10_resnet18.yaml")
    optim = resolution.config.optim
    assert optim.milestones == [1, 2]  # distinct, both past the end of the 1-epoch run
    assert "-> [1, 2] (none of its decays falls inside a 1-epoch run)" in resolution.notes[0]
    # the 0.01-epoch warm-up still lasts min(100 steps, 1 epoch): the whole 4-step run at warmup_lr
    assert [lr_factor(optim, steps_per_epoch=4)(s) for s in range(4)] == pytest.approx([0.2] * 4)


def test_unchanged_epochs_keep_the_paper_schedule() -> None:
    optim = _optim(100, "arat_cifar10_resnet18.yaml").config.optim
    assert optim.milestones == [76, 91] and optim.warmup_epochs == 1


def test_warmup_scales_to_a_fraction_of_an_epoch_with_a_floor_in_steps() -> None:
    optim = _optim(3, "arat_cifar10_resnet18.yaml").config.optim
    assert optim.warmup_epochs == pytest.approx(0.03) and optim.milestones == [2, 3]
    factor = lr_factor(optim, steps_per_epoch=1000)  # 0.03 epoch = 30 steps: raised to the 100-step floor
    assert [factor(s) for s in (0, 29, 99, 100)] == pytest.approx([0.2, 0.2, 0.2, 1.0])
    long = lr_factor(replace(optim, warmup_epochs=0.5), steps_per_epoch=1000)  # above the floor: as given
    assert [long(s) for s in (499, 500)] == pytest.approx([0.2, 1.0])
    assert lr_factor(replace(optim, warmup_epochs=0.0), steps_per_epoch=1000)(0) == pytest.approx(1.0)  # off is off


@pytest.mark.parametrize(("milestones", "old", "new", "expected", "remark"), [
    ([100, 150], 200, 3, [2, 3], "(only 1 of its 2 decays falls inside a 3-epoch run)"),  # was [2, 2]: x0.01 at once
    ([100, 150], 200, 4, [2, 3], ""),
    ([75, 90], 100, 30, [22, 27], ""),
    ([74, 89], 90, 30, [25, 29], ""),  # the last epoch stays the last epoch
    ([75, 90], 100, 1, [1, 2], "(none of its decays falls inside a 1-epoch run)"),
    ([30, 10, 20], 40, 2, [1, 2, 3], "(only 1 of its 3 decays falls inside a 2-epoch run)"),  # sorted first
    ([50, 120], 100, 10, [5, 12], ""),  # past the old end: past the new one
])
def test_scaled_milestones_stay_distinct_and_ordered_and_say_what_falls_outside(
        milestones: list[int], old: int, new: int, expected: list[int], remark: str) -> None:
    from atzoo.config.schema import _scaling_remark, scale_milestones

    scaled = scale_milestones(milestones, new / old, new, old)
    assert scaled == expected and scaled == sorted(set(scaled)) and min(scaled) >= 1
    assert _scaling_remark("milestones", milestones, scaled, new, old).strip() == remark


def test_cosine_schedule_follows_the_new_length() -> None:
    optim = OptimConfig(epochs=4, schedule="cosine")
    factor = lr_factor(optim, steps_per_epoch=5)
    assert factor(10) == pytest.approx(0.5) and factor(20) == pytest.approx(0.0)
    assert _optim(4, overrides=("optim.schedule=cosine",)).notes == []  # no milestones to scale


def test_swa_start_scales_unless_given() -> None:
    scaled = _optim(20, "arat_swa_cifar10_resnet18.yaml").config.averaging
    assert scaled.swa_start_epoch == round(75 * 20 / 100)
    given = _optim(20, "arat_swa_cifar10_resnet18.yaml", ("averaging.swa_start_epoch=5",)).config.averaging
    assert given.swa_start_epoch == 5


# --------------------------------------------------------------------------- the official AR-AT attack quirk


@pytest.mark.parametrize("inplace", [False, True])
def test_official_inplace_start_switch(inplace: bool) -> None:
    import torch

    from atzoo.methods.base import create_method

    cfg = build_config(None, ["model.name=small_cnn", "model.in_channels=1", "model.num_classes=10",
                              "method.split_bn=false", "method.layers=relu3", "attack.steps=1",
                              f"method.official_inplace_start={str(inplace).lower()}"],
                       method={"name": "arat"}, data={"name": "digits"})
    assert build_config(None, [], method={"name": "arat"}).method.official_inplace_start is False  # off by default
    method = create_method("arat", cfg)
    from atzoo.models import create_model

    model = method.prepare_model(create_model("small_cnn", 10, 1))
    x = torch.rand(4, 1, 8, 8) * 0.5 + 0.25
    x_orig, y = x.clone(), torch.arange(4)
    eps, modules = cfg.attack.eps, method.build_modules(model)
    torch.manual_seed(123)
    x_adv = method.attack(model, modules, x, y)
    torch.manual_seed(123)
    start = torch.empty_like(x).uniform_(-eps, eps)
    if inplace:  # the clean input the loss sees is x + start (unclamped), and PGD projects around it
        assert torch.equal(x, x_orig + start)
        assert (x_adv - x).abs().max() <= eps + 1e-6 and (x_adv - x_orig).abs().max() > eps
    else:
        assert torch.equal(x, x_orig) and (x_adv - x_orig).abs().max() <= eps + 1e-6


def test_imagenette_is_set_up_as_the_official_arat_code() -> None:
    from PIL import Image
    from torchvision import transforms as T

    from atzoo.data.vision import imagenette_transforms

    train, test = imagenette_transforms()
    assert [type(t) for t in train.transforms] == [T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor]
    assert train.transforms[0].size == (128, 128) and train.transforms[0].padding == 4
    assert [type(t) for t in test.transforms] == [T.CenterCrop, T.ToTensor]
    image = Image.new("RGB", (213, 160))  # an imagenette2-160 image: shorter side 160 px
    assert train(image).shape == test(image).shape == (3, 128, 128)
    for path in sorted((REPO / "recipes").glob("*imagenette*.yaml")):
        cfg = build_config(path)
        assert cfg.model.name == "resnet18", path.name  # the CIFAR-style ResNet-18 (3x3 stride-1 stem)
        if cfg.method.name == "lbgat":
            assert cfg.optim.lr == 0.01 and cfg.method.teacher == "resnet18"  # appendix: 0.1 diverged
        if cfg.method.name == "arat":
            assert cfg.method.split_bn is True


@pytest.mark.parametrize("path", [p for p in TOP_RECIPES if recipe_setting(p)[0] == "at"], ids=lambda p: p.stem)
def test_at_recipes_use_the_robustness_defaults_the_paper_ran(path: Path) -> None:
    cfg = build_config(path)  # ndb796 code (train-mode attack) aligned to MadryLab robustness' CIFAR defaults
    assert (cfg.attack.steps, cfg.attack.bn_mode, cfg.attack.eps, cfg.attack.step_size) == (
        7, "train", pytest.approx(8 / 255), pytest.approx(2 / 255))
    assert (cfg.optim.epochs, cfg.optim.milestones, cfg.optim.weight_decay, cfg.optim.lr) == (150, [50, 100], 5e-4, 0.1)
    assert cfg.optim.warmup_lr is None


def test_swa_recipes_start_where_the_official_code_does() -> None:
    for path in sorted((REPO / "recipes").glob("arat_swa_*.yaml")):
        # scripts/ARAT+SWA/*.sh: swa_start=76, swa_freq=500; train_ARAT.py:191 averages when
        # swa_start <= epoch (1-based), i.e. from 0-based epoch 75
        averaging = build_config(path).averaging
        assert (averaging.swa, averaging.swa_start_epoch, averaging.swa_every_steps) == (True, 75, 500)



def test_recipe_lookup_reads_recipes_through_the_bounded_yaml_reader(tmp_path, monkeypatch) -> None:
    """The default-recipe lookup reads YAML as ``--recipe`` does: a file with anchors/aliases
    (which ``--recipe`` refuses) is never picked, and a billion-laughs file is skipped."""
    from atzoo.config.recipes import default_recipe

    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    (tmp_path / "at_digits_small_cnn.yaml").write_text(
        "method: &m {name: at}\ndata: {name: digits}\nmodel: {name: small_cnn}\nother: *m\n")
    monkeypatch.setenv("ATZOO_RECIPES", str(tmp_path))
    assert default_recipe("at", "digits", "small_cnn") is None


# --------------------------------------------------------------------------- schedules against the official code


def official_arat_lr(epoch: int) -> float:
    """The lr of 1-based epoch ``epoch`` in futakw/AR-AT train_ARAT.py: ``CustomLR`` sets 0.02 at
    construction (:360-361) and ``scheduler.step(epoch)`` after each finished 1-based epoch
    (:430) sets ``get_lr(epoch)`` (:340-353) for the next one."""
    if epoch == 1:
        return 0.02
    finished = epoch - 1
    if finished <= 75:
        return 0.1
    if finished <= 90:
        return 0.01
    if finished <= 100:
        return 0.001
    return 0.0001 if finished <= 110 else 0.00001


def official_lbgat_lr(epoch: int) -> float:
    """The lr of 1-based epoch ``epoch`` in dvlab-research/LBGAT train_lbgat_cifar100.py:152-164,
    set *before* each epoch (:185-187)."""
    lr = 0.02 if epoch == 1 else 0.1
    if epoch >= 76:
        lr = 0.01
    if epoch >= 91:
        lr = 0.001
    return lr


def _atzoo_epoch_lrs(recipe: str, steps_per_epoch: int = 7) -> list[tuple[float, float]]:
    """(first-step lr, last-step lr) of every 0-based epoch of a recipe's schedule."""
    optim = build_config(REPO / "recipes" / recipe).optim
    factor = lr_factor(optim, steps_per_epoch)
    return [(optim.lr * factor(e * steps_per_epoch), optim.lr * factor((e + 1) * steps_per_epoch - 1))
            for e in range(optim.epochs)]


@pytest.mark.parametrize("recipe", ["arat_cifar10_resnet18.yaml", "arat_cifar100_wrn34_10.yaml",
                                    "arat_swa_cifar10_resnet18.yaml", "asym_trades_cifar10_resnet18.yaml"])
def test_arat_lr_equals_the_official_custom_lr_every_epoch(recipe: str) -> None:
    lrs = _atzoo_epoch_lrs(recipe)
    assert len(lrs) == 100
    for epoch0, (first, last) in enumerate(lrs):
        want = official_arat_lr(epoch0 + 1)
        assert first == pytest.approx(want) and last == pytest.approx(want), f"0-based epoch {epoch0}"


@pytest.mark.parametrize("recipe", ["lbgat0_cifar10_resnet18.yaml", "lbgat6_cifar100_wrn34_10.yaml"])
def test_lbgat_lr_equals_the_official_adjust_learning_rate_every_epoch(recipe: str) -> None:
    """LBGAT's official schedule steps before each epoch with ``epoch >= 76``: 0-based 75 and 90."""
    lrs = _atzoo_epoch_lrs(recipe)
    assert build_config(REPO / "recipes" / recipe).optim.milestones == [75, 90]
    for epoch0, (first, last) in enumerate(lrs):
        want = official_lbgat_lr(epoch0 + 1)
        assert first == pytest.approx(want) and last == pytest.approx(want), f"0-based epoch {epoch0}"


def test_swa_averages_from_the_official_epoch() -> None:
    """train_ARAT.py:191 averages when ``swa_start <= epoch`` (1-based) with swa_start 76."""
    from torch import nn

    from atzoo.engine.averaging import WeightAverage

    averager = WeightAverage(nn.Linear(2, 2), build_config(REPO / "recipes/arat_swa_cifar10_resnet18.yaml").averaging)
    for epoch0 in range(100):
        official = 76 <= epoch0 + 1
        assert averager.due(epoch0, global_step=500 * (epoch0 + 1)) is official, epoch0


def test_one_train_reads_each_yaml_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``atzoo train`` plans once (:func:`atzoo.engine.plan.plan_run`): the recipe lookup reads
    each recipe once, the chosen one is not read again, and the config is resolved once
    (it was read 6 times when the CLI, the naming and the announcement each resolved it)."""
    from collections import Counter

    import atzoo.files.safe_read as safe_read

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "at_digits_small_cnn.yaml").write_text(
        "method: {name: at}\ndata: {name: digits, train_subset: 64, test_subset: 16, batch_size: 32}\n"
        "model: {name: small_cnn}\nattack: {steps: 1}\n")
    (recipes / "trades_digits_small_cnn.yaml").write_text(
        "method: {name: trades}\ndata: {name: digits}\nmodel: {name: small_cnn}\n")
    monkeypatch.setenv("ATZOO_RECIPES", str(recipes))
    reads: Counter[str] = Counter()
    parse = safe_read.load_yaml

    def counting(text: str, source: str, *args: object, **kwargs: object) -> object:
        reads[source] += 1
        return parse(text, source, *args, **kwargs)

    monkeypatch.setattr(safe_read, "load_yaml", counting)
    out = tmp_path / "run"
    assert run(["train", "at", "--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--out", str(out),
                "run.max_steps=1", "run.evaluate=false", "run.trackers=[]"]) == 0
    assert (out / "model.safetensors").is_file()
    assert from_yaml((out / "config.yaml").read_text()).data.train_subset == 64  # the shipped recipe was used
    assert reads == {f"recipe {recipes / 'at_digits_small_cnn.yaml'}": 1,
                     f"recipe {recipes / 'trades_digits_small_cnn.yaml'}": 1,
                     f"config {out / 'config.yaml'}": 1}  # the command's own summary line
