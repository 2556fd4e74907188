"""Extension points are registry queries: a new attack or method reaches the console, the
CLI help and the checks without editing any list elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from atzoo.attacks import Attack, ThreatModel, build_attack
from atzoo.cli import run
from atzoo.config import build_config
from atzoo.eval import parse_attacks
from atzoo.methods import Method, create_method
from atzoo.methods.at import AT
from atzoo.models import create_model
from atzoo.registry import ATTACKS, METHODS, list_methods, load_builtins


def toy_step(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf") -> Tensor:
    """A toy attack: one signed input-gradient step of eps (L-inf), clamped to [0, 1]; it
    leaves the model in train mode on purpose (the bound attack must restore it)."""
    x = x.detach().clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    model.train()  # a careless attack: BatchAttack restores every module's flag
    return (x + eps * grad.sign()).clamp(0, 1).detach()


toy_step.summary = "toy: one signed gradient step"  # type: ignore[attr-defined]


@pytest.fixture()
def toy_attack(monkeypatch: pytest.MonkeyPatch) -> str:
    load_builtins()
    monkeypatch.setitem(ATTACKS._entries, "toy_step", toy_step)
    return "toy_step"


def test_a_registered_attack_is_an_attack_object_that_restores_the_mode(toy_attack: str) -> None:
    model = create_model("small_cnn", 10, 1).eval()
    model.fc.train()  # a mixed state, restored module by module
    attack = build_attack(toy_attack, {"eps": 0.1, "norm": "linf", "steps": 7})
    assert isinstance(attack, Attack) and attack.name == toy_attack
    assert attack.threat_model == ThreatModel("linf", 0.1) and dict(attack.settings) == {"eps": 0.1, "norm": "linf"}
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    x_adv = attack(model, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not model.training and model.fc.training  # the attack's model.train() was undone
    assert [m.training for m in model.modules()].count(True) == sum(1 for _ in model.fc.modules())


def test_a_registered_attack_is_a_training_and_an_eval_attack(toy_attack: str) -> None:
    cfg = build_config(None, [f"attack.name={toy_attack}"], method={"name": "at"})
    assert create_method("at", cfg).ctx.attack.name == toy_attack
    assert toy_attack in parse_attacks(["clean", toy_attack])


def test_a_registered_attack_gets_its_row_in_the_eval_console(
    toy_attack: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert run(["train", "at", "--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--out", str(run_dir),
                "data.train_subset=64", "data.batch_size=32", "attack.steps=1", "run.max_steps=1",
                "run.evaluate=false", "run.trackers=[]"]) == 0
    capsys.readouterr()
    assert run(["eval", str(run_dir), "--attacks", f"clean,{toy_attack}", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "TOY_STEP %" in out and "clean %" in out


class ToyMethod(AT):
    """A toy method: AT under another name (a new method is its file, card, recipe and test)."""

    summary = "toy: AT under another name"


def test_a_registered_method_is_in_the_cli_help_and_trains(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    load_builtins()
    monkeypatch.setitem(METHODS._entries, "toy_at", ToyMethod)
    assert run(["--help"]) == 0
    top = " ".join(capsys.readouterr().out.split())
    assert run(["train", "--help"]) == 0
    train = " ".join(capsys.readouterr().out.split())
    for name in list_methods():
        assert name in top and name in train, name
    assert "toy_at" in top
    method = create_method("toy_at", build_config(None, [], method={"name": "toy_at"}))
    assert isinstance(method, Method) and method.config.name == "toy_at"


def test_model_facts_are_declared_where_the_model_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new architecture names its paper family and FLOPs at registration; the methods' paper
    settings and reproduce's cost estimate follow without a table to edit."""
    from atzoo.methods.arat import default_gamma
    from atzoo.models.layers import architecture
    from atzoo.reproduce.cost import flop_factor
    from atzoo.registry import MODELS

    load_builtins()
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))  # registration undone after the test
    architecture("toy_wrn", "pool", family="wideresnet", gflops=2 * 1.11)(
        lambda num_classes, in_channels, first: nn.Sequential(first, nn.Flatten(), nn.LazyLinear(num_classes)))
    assert default_gamma("toy_wrn") == 100.0 and default_gamma("resnet18") == 30.0  # AR-AT's gamma per family
    mart = build_config(None, [], method={"name": "mart"}, model={"name": "toy_wrn"}).method
    resnet = build_config(None, [], method={"name": "mart"}, model={"name": "preact_resnet18"}).method
    assert mart.beta == 6.0 and resnet.beta == 5.0
    assert flop_factor("toy_wrn", "cifar10") == 2.0 and flop_factor("resnet18", "imagenette") == 16.0  # 128 px crops
    assert flop_factor("small_cnn", "digits") is None  # declares no FLOPs: the estimate says so


def test_dataset_facts_are_declared_where_the_dataset_is_registered() -> None:
    from atzoo.registry import DATASETS
    from atzoo.reproduce.scale import train_size

    assert train_size("cifar10") == 50_000 and train_size("imagenette") == 9_469
    assert train_size("npz:/data/x.npz") is None and DATASETS.fact("svhn", "image_size") == 32
