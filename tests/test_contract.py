"""The contract between engine and methods: no upward import, the method context, the
training attack from ``ATTACKS`` (also in evaluation), explicit regularisers, step hooks."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from atzoo.attacks import fgsm, pgd
from atzoo.config import AttackConfig, EvalConfig, build_config
from atzoo.errors import ConfigError, RegistryError
from atzoo.eval import evaluate, parse_attacks
from atzoo.methods import StandardModel, StepContext, create_method
from atzoo.methods.arrest import ARREST
from atzoo.models import create_model
from atzoo.registry import list_attacks

from digits_model import train_digits_mlp

PACKAGE = Path(__file__).resolve().parents[1] / "atzoo"


# --------------------------------------------------------------------------- layers


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (top level or inside functions), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def upward_imports(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for line, module in imported_modules(path):
            if module.startswith(forbidden):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return bad


def test_no_method_imports_the_engine() -> None:
    assert upward_imports("methods", ("atzoo.engine",)) == []


def test_the_import_walk_finds_an_upward_import(tmp_path: Path) -> None:
    """The walk sees imports inside functions too (as ARREST's pretraining once had)."""
    file = tmp_path / "m.py"
    file.write_text("def f():\n    from atzoo.engine import train\n    import atzoo.engine.trainer\n")
    assert [m for _, m in imported_modules(file) if m.startswith("atzoo.engine")] == [
        "atzoo.engine", "atzoo.engine.train", "atzoo.engine.trainer"]


def test_ground_floor_imports_nothing_of_atzoo_but_errors() -> None:
    """``atzoo/files/`` (atomic writes, bounded readers, path checks) imports only errors and itself."""
    for path in sorted((PACKAGE / "files").glob("*.py")):
        modules = {m for _, m in imported_modules(path) if m.startswith("atzoo")}
        assert all(m.startswith(("atzoo.errors", "atzoo.files")) for m in modules), (path, modules)


def test_engine_has_no_accelerate_state_reset_and_no_route_name() -> None:
    for path in (PACKAGE / "engine").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "AcceleratorState._reset_state" not in text and '"adv"' not in text, path


# --------------------------------------------------------------------------- the context


def test_method_sees_its_config_and_context_not_the_run() -> None:
    cfg = build_config(None, ["attack.steps=3", "model.num_classes=4"], method={"name": "mart"},
                       model={"name": "resnet18"})
    method = create_method("mart", cfg)
    assert not hasattr(method, "run")
    assert method.config is cfg.method and method.config.beta == 5.0  # resolved per model
    a = method.ctx.attack
    # MART's own paper attack: eps 0.031 (its file's paper defaults), not another method's 8/255
    assert (a.name, a.settings["steps"], a.eps, a.norm, a.mode) == ("pgd", 3, 0.031, "linf", "eval")
    assert (method.ctx.model.name, method.ctx.model.num_classes) == ("resnet18", 4)


def test_arrest_declares_a_standard_model_and_reads_it_from_the_context(tmp_path: Path) -> None:
    cfg = build_config(None, ["method.pretrain_epochs=2"], method={"name": "arrest"})
    assert ARREST.needs(cfg.method) == (StandardModel(epochs=2),)
    with pytest.raises(ConfigError, match="needs 'standard_model'"):
        create_method("arrest", cfg).prepare_model(create_model("small_cnn", 10, 1))
    assert ARREST.needs(build_config(None, [f"method.pretrained={tmp_path}"], method={"name": "arrest"}).method) == ()


# --------------------------------------------------------------------------- attacks


def test_training_attack_is_the_registered_one() -> None:
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    cfg = build_config(None, ["attack.name=fgsm", "attack.eps=0.1"], method={"name": "at"})
    method = create_method("at", cfg)
    assert method.ctx.attack.name == "fgsm" and dict(method.ctx.attack.settings) == {"eps": 0.1, "norm": "linf"}
    # FGSM: one signed step of eps (its own step, not the run's PGD step size or start)
    assert torch.equal(method.attack(model, nn.ModuleDict(), x, y), fgsm(model, x, y, eps=0.1))
    default = create_method("at", build_config(None, ["attack.random_start=none"], method={"name": "at"}))
    expected = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=7, random_start="none")  # Madry's PGD-7
    assert torch.equal(default.attack(model, nn.ModuleDict(), x, y), expected)


@pytest.mark.parametrize(("name", "message"), [
    ("fgsn", r"unknown training attack attack.name='fgsn'. Did you mean 'fgsm'\?"),
    ("autoattack", r"Valid choices: fgsm, fgsm_rs, pgd, pgd20"),
])
def test_bad_training_attack_is_one_line(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_config(None, [f"attack.name={name}"], method={"name": "at"})
    assert "\n" not in str(info.value)


def test_kl_methods_refuse_a_ce_only_training_attack() -> None:
    method = create_method("trades", build_config(None, ["attack.name=fgsm"], method={"name": "trades"}))
    model = create_model("small_cnn", 10, 1)
    with pytest.raises(ConfigError, match="attacks the cross-entropy only"):
        method.attack(model, nn.ModuleDict(), torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))


def test_every_listed_attack_is_accepted_by_eval() -> None:
    names = list_attacks()
    assert {"fgsm", "fgsm_rs", "pgd", "pgd20", "autoattack"} <= set(names)
    assert parse_attacks(names) == ["clean", "aa", "fgsm", "fgsm_rs", "pgd20"]
    with pytest.raises(ConfigError, match="Did you mean 'fgsm'"):
        parse_attacks(["fgsn"])


def test_eval_fgsm_equals_direct_computation() -> None:
    from atzoo.data import create_dataset

    bundle = create_dataset("digits", test_subset=48)
    model = train_digits_mlp(bundle.train.x.float() / 255, bundle.train.y)
    payload = evaluate(model, bundle, EvalConfig(attacks=["fgsm"], eps=0.05, batch_size=16, invariance=False),
                       attack_cfg=AttackConfig(), progress=False)
    x, y = bundle.test.x.float() / 255, bundle.test.y
    with torch.no_grad():
        direct = (model(fgsm(model, x, y, eps=0.05)).argmax(1) == y).float().mean().item() * 100
    assert payload["fgsm_acc"] == pytest.approx(direct, abs=1e-4)
    assert payload["attacks"]["fgsm"] == {"attack": "fgsm", "eps": 0.05, "norm": "linf"}
    assert payload["clean_acc"] is not None and set(payload["per_class"]) == {"clean", "fgsm"}


def test_unknown_registered_name_lists_the_attacks() -> None:
    from atzoo.attacks import build_attack

    with pytest.raises(RegistryError, match="Valid choices: autoattack, fgsm, fgsm_rs, pgd, pgd20"):
        build_attack("nope", {})


# --------------------------------------------------------------------------- regularisers


def test_regularisers_are_declared_not_guessed() -> None:
    lbgat = create_method("lbgat", build_config(None, ["method.beta=6.0"], method={"name": "lbgat"}))
    assert lbgat.is_regularizer("kl") and not lbgat.is_regularizer("mse")  # MSE is LBGAT's main term
    assert not lbgat.is_regularizer("ce_teacher")
    arat = create_method("arat", build_config(None, [], method={"name": "arat"}))
    assert arat.is_regularizer("align/layer1.0") and not arat.is_regularizer("ce_adv")
    assert not arat.is_regularizer("alignment")  # a name, not a prefix guess
    reg, cls = lbgat.split_loss({"mse": torch.tensor(1.0), "ce_teacher": torch.tensor(2.0), "kl": torch.tensor(4.0)})
    assert (float(reg), float(cls)) == (4.0, 3.0)


# --------------------------------------------------------------------------- step hooks


class Recorder:
    """Hooks of a method instance that record what they saw (and perturb/restore one weight)."""

    def __init__(self, method: Any, delta: float) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.delta = delta
        method.before_step = self.before_step
        method.before_optimizer_step = self.before_optimizer_step
        method.after_optimizer_step = self.after_optimizer_step

    def before_step(self, step: StepContext) -> None:
        self.calls.append(("before_step", (step.epoch, step.global_step, step.x_adv is not None, step.synced)))
        with torch.no_grad():
            next(step.model.parameters()).add_(self.delta)

    def before_optimizer_step(self, step: StepContext) -> None:
        grads = [p.grad for p in step.model.parameters()]
        self.calls.append(("before_optimizer_step", all(g is not None for g in grads)))

    def after_optimizer_step(self, step: StepContext) -> None:
        self.calls.append(("after_optimizer_step", step.lr))
        with torch.no_grad():
            next(step.model.parameters()).sub_(self.delta)


def _runner(method_name: str = "at") -> tuple[Any, Any]:
    from accelerate import Accelerator

    from atzoo.engine.module import TrainingModule
    from atzoo.engine.step import StepRunner
    from atzoo.engine.trainer import build_optimizer

    cfg = build_config(None, ["attack.steps=2", "optim.lr=0.5", "optim.momentum=0", "optim.weight_decay=0"],
                       method={"name": method_name})
    method = create_method(method_name, cfg)
    torch.manual_seed(0)
    model = method.prepare_model(create_model("small_cnn", 10, 1))
    core = TrainingModule(model, nn.ModuleDict(method.build_modules(model)), method)
    optimizer = build_optimizer(core, cfg)
    accelerator = Accelerator(cpu=True)
    wrapped, optimizer = accelerator.prepare(core, optimizer)
    return StepRunner(accelerator, core, wrapped, optimizer), method


def test_step_hooks_run_in_order_and_see_the_batch() -> None:
    from atzoo.engine.step import train_step

    runner, method = _runner()
    recorder = Recorder(method, delta=0.0)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    out = train_step(runner, x, y, epoch=3, global_step=7)
    assert recorder.calls == [("before_step", (3, 7, True, True)), ("before_optimizer_step", True),
                              ("after_optimizer_step", 0.5)]
    assert out.x_adv is not None and torch.isfinite(out.loss)


def test_weights_changed_before_the_step_are_the_ones_the_gradient_sees() -> None:
    """A hook that perturbs w by v before the forward and removes v after the optimizer
    step gives w - lr * grad(w + v): AWP's update (Wu et al. 2020, Algorithm 1). (Clean
    training, so that no attack runs before the hook.)"""
    from atzoo.engine.step import train_step

    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    delta = 0.01
    plain, _ = _runner("standard")
    shifted_ref, _ = _runner("standard")
    first = next(shifted_ref.core.model.parameters())
    with torch.no_grad():
        first.add_(delta)  # the reference: an ordinary step taken at w + v ...
    torch.manual_seed(1)
    train_step(shifted_ref, x, y)
    with torch.no_grad():
        first.sub_(delta)  # ... then v removed
    Recorder(plain.core.method, delta)
    torch.manual_seed(1)
    train_step(plain, x, y)
    unperturbed, _ = _runner("standard")
    train_step(unperturbed, x, y)
    for a, b in zip(plain.core.parameters(), shifted_ref.core.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(next(plain.core.parameters()), next(unperturbed.core.parameters()))


def test_step_context_sums_over_processes_through_the_accelerator() -> None:
    """``step.all_reduce_sum`` is the accelerator's sum over processes (so a hook can make the
    same weight change on every process); on one process it returns the tensor unchanged."""
    from atzoo.engine.step import train_step

    runner, method = _runner()
    seen: list[Tensor] = []
    method.before_step = lambda step: seen.append(step.all_reduce_sum(torch.tensor([1.0, -2.0])))
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    train_step(runner, x, y)
    calls: list[str] = []

    def fake_reduce(t: Tensor, reduction: str) -> Tensor:  # stands in for two processes
        calls.append(reduction)
        return 2 * t

    runner.accelerator.reduce = fake_reduce
    train_step(runner, x, y)
    assert torch.equal(seen[0], torch.tensor([1.0, -2.0]))
    assert torch.equal(seen[1], torch.tensor([2.0, -4.0])) and calls == ["sum"]


def test_method_state_may_hold_an_optimizer_state_dict() -> None:
    """A proxy optimizer's state (integer keys) round-trips through the checkpoint format."""
    from atzoo.engine.checkpoint import join_tensors, split_tensors

    proxy = nn.Linear(3, 2)
    opt = torch.optim.SGD(proxy.parameters(), lr=0.1, momentum=0.9)
    proxy(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors: dict[str, Tensor] = {}
    plain = split_tensors({"proxy_opt": opt.state_dict(), "count": 2}, "method", tensors)
    import json

    restored = join_tensors(json.loads(json.dumps(plain)), tensors)
    fresh = torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(restored["proxy_opt"])
    momentum = [o.state_dict()["state"][0]["momentum_buffer"] for o in (fresh, opt)]
    assert torch.equal(*momentum)
    assert restored["count"] == 2
