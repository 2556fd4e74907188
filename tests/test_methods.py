"""TRADES, MART, LBGAT, ARREST: loss formulas, gradient flow, attacks, configs, recipes.

Each loss is compared with a direct transcription of its formula (the official code's
expression where one exists) on fixed tensors; the gradient checks follow the stop-grad
choices of the references (TRADES and MART: none; LBGAT: none; ARREST: the frozen
pretrained model gets nothing).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from atzoo.config import RunConfig, build_config
from atzoo.errors import CheckpointError, ConfigError
from atzoo.methods import create_method
from atzoo.methods.arrest import FrozenReference, arrest_loss, eps_ball_noise, load_weights, noisy_replay
from atzoo.methods.lbgat import lbgat_loss
from atzoo.methods.mart import mart_loss, strongest_wrong_class
from atzoo.methods.trades import trades_loss
from atzoo.models import create_model, penultimate_features

REPO = Path(__file__).resolve().parents[1]
ROBUST_METHODS = ("trades", "mart", "lbgat", "arrest")
TOL = 1e-6


def fixed_logits(seed: int = 0, batch: int = 6, classes: int = 5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Clean, adversarial and teacher logits (float64, leaves with grad) and labels."""
    g = torch.Generator().manual_seed(seed)
    clean = (3 * torch.randn(batch, classes, generator=g, dtype=torch.float64)).requires_grad_()
    adv = (3 * torch.randn(batch, classes, generator=g, dtype=torch.float64)).requires_grad_()
    teacher = (3 * torch.randn(batch, classes, generator=g, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, classes, (batch,), generator=g)
    with torch.no_grad():  # make y the adversarial top-1 for some rows: MART's other branch
        adv[0, y[0]] += 20
        adv[3, y[3]] += 20
    return clean, adv, teacher, y


def kl_official(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """TRADES's ``(1/B) * KLDivLoss(size_average=False)(log_softmax(q), softmax(p))``."""
    criterion = nn.KLDivLoss(reduction="sum")
    return criterion(F.log_softmax(logits_q, dim=1), F.softmax(logits_p, dim=1)) / logits_p.shape[0]


def run_config(method: str, **method_fields: object) -> RunConfig:
    cfg = build_config(method={"name": method, **method_fields}, model={"name": "small_cnn"},
                       attack={"steps": 2})
    cfg.model.num_classes, cfg.model.in_channels = 4, 1  # what the engine sets from the dataset
    return cfg


# --------------------------------------------------------------------------- TRADES


def test_trades_loss_equals_transcription() -> None:
    clean, adv, _, y = fixed_logits()
    parts = trades_loss(clean, adv, y, beta=6.0)
    assert set(parts) == {"ce_clean", "kl"}
    p = F.softmax(clean, dim=1)
    by_hand = (p * (p.log() - F.log_softmax(adv, dim=1))).sum() / clean.shape[0]
    assert torch.allclose(parts["kl"], 6.0 * by_hand, atol=TOL, rtol=0)
    assert torch.allclose(parts["kl"], 6.0 * kl_official(clean, adv), atol=TOL, rtol=0)
    assert torch.allclose(parts["ce_clean"], F.cross_entropy(clean, y), atol=TOL, rtol=0)


def test_trades_kl_sends_gradient_into_the_clean_logits() -> None:
    clean, adv, _, y = fixed_logits()
    kl = trades_loss(clean, adv, y, beta=6.0)["kl"]
    grad_clean, grad_adv = torch.autograd.grad(kl, [clean, adv])
    assert grad_clean.abs().sum() > 1e-3  # p(x) is not detached
    assert grad_adv.abs().sum() > 1e-3
    # and it is the gradient of the full formula, not of a detached target
    p = F.softmax(clean, dim=1)
    by_hand = 6.0 * (p * (p.log() - F.log_softmax(adv, dim=1))).sum() / clean.shape[0]
    assert torch.allclose(grad_clean, torch.autograd.grad(by_hand, clean)[0], atol=TOL, rtol=0)


def test_trades_attack_computes_clean_distribution_once_per_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    model.train()
    x = torch.rand(4, 3, 2, 2)
    y = torch.tensor([0, 1, 2, 0])
    calls: list[tuple[bool, bool]] = []  # (input is the clean batch, model in train mode)

    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        calls.append((torch.equal(args[0], x), module.training))

    model.register_forward_pre_hook(hook)
    cfg = build_config(method={"name": "trades"}, attack={"steps": 5})
    method = create_method("trades", cfg)
    x_adv = method.attack(model, nn.ModuleDict(), x, y)
    assert len(calls) == 1 + 5  # one clean pass, then one pass per PGD step
    assert sum(is_clean for is_clean, _ in calls) == 1
    assert not any(training for _, training in calls)  # the attack runs in eval mode
    assert model.training  # and the mode is restored
    assert (x_adv - x).abs().max() <= cfg.attack.eps + 1e-6
    assert not torch.equal(x_adv, x)


def test_training_attack_defaults() -> None:
    for name in ("trades", "mart", "lbgat"):
        cfg = build_config(method={"name": name})
        assert (cfg.attack.random_start, cfg.attack.bn_mode) == ("normal", "eval"), name
    cfg = build_config(method={"name": "arrest"})
    assert (cfg.attack.random_start, cfg.attack.bn_mode) == ("uniform", "eval")


# --------------------------------------------------------------------------- MART


def mart_official(clean: Tensor, adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """The loss of the official MART code, transcribed."""
    kl = nn.KLDivLoss(reduction="none")
    batch_size = len(clean)
    adv_probs = F.softmax(adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(clean, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / batch_size) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs)
    )
    return loss_adv + float(beta) * loss_robust


def test_mart_loss_equals_official_transcription() -> None:
    clean, adv, _, y = fixed_logits()
    parts = mart_loss(clean, adv, y, beta=5.0)
    assert set(parts) == {"bce_adv", "robust_kl"}
    total = parts["bce_adv"] + parts["robust_kl"]
    assert torch.allclose(total, mart_official(clean, adv, y, 5.0), atol=TOL, rtol=0)
    # the two parts separately
    assert torch.allclose(parts["robust_kl"], mart_official(clean, adv, y, 5.0) - mart_official(clean, adv, y, 0.0),
                          atol=TOL, rtol=0)


def test_mart_strongest_wrong_class() -> None:
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    y = torch.tensor([1, 2, 0])
    assert strongest_wrong_class(probs, y).tolist() == [2, 0, 2]


def test_mart_weight_carries_gradient() -> None:
    clean, adv, _, y = fixed_logits()
    robust = mart_loss(clean, adv, y, beta=5.0)["robust_kl"]
    grad = torch.autograd.grad(robust, clean)[0]
    # the same term with the weight (1.0000001 - p_y(x)) detached has another gradient
    p = F.softmax(clean, dim=1)
    kl = (p * (F.log_softmax(clean, dim=1) - torch.log(F.softmax(adv, dim=1) + 1e-12))).sum(1)
    weight = 1.0000001 - p.gather(1, y[:, None]).squeeze(1)
    detached = torch.autograd.grad(5.0 * (kl * weight.detach()).mean(), clean, retain_graph=True)[0]
    full = torch.autograd.grad(5.0 * (kl * weight).mean(), clean)[0]
    assert torch.allclose(grad, full, atol=TOL, rtol=0)
    assert (grad - detached).abs().max() > 1e-3


def test_mart_beta_resolves_per_model() -> None:
    assert build_config(method={"name": "mart"}, model={"name": "resnet18"}).method.beta == 5.0
    assert build_config(method={"name": "mart"}, model={"name": "preact_resnet18"}).method.beta == 5.0
    assert build_config(method={"name": "mart"}, model={"name": "wrn34_10"}).method.beta == 6.0
    assert build_config(method={"name": "mart", "beta": 2.5}, model={"name": "resnet18"}).method.beta == 2.5


# --------------------------------------------------------------------------- LBGAT


@pytest.mark.parametrize("beta", [0.0, 6.0])
def test_lbgat_loss_equals_official_transcription(beta: float) -> None:
    clean, adv, teacher, y = fixed_logits()
    parts = lbgat_loss(adv, clean, teacher, y, beta)
    mse, ce = torch.nn.MSELoss(), torch.nn.CrossEntropyLoss()
    official = mse(adv, teacher) + ce(teacher, y) + beta * kl_official(clean, adv)
    assert torch.allclose(sum(parts.values()), official, atol=TOL, rtol=0)
    assert torch.allclose(parts["mse"], ((adv - teacher) ** 2).sum() / adv.numel(), atol=TOL, rtol=0)
    assert ("kl" in parts) == (beta != 0)


def test_lbgat_mse_sends_gradient_into_the_teacher_and_the_student() -> None:
    clean, adv, teacher, y = fixed_logits()
    mse = lbgat_loss(adv, clean, teacher, y, 6.0)["mse"]
    grad_teacher, grad_adv = torch.autograd.grad(mse, [teacher, adv])
    assert grad_teacher.abs().sum() > 1e-3 and grad_adv.abs().sum() > 1e-3


def test_lbgat_teacher_gets_gradient_from_mse_alone() -> None:
    cfg = run_config("lbgat")
    method = create_method("lbgat", cfg)
    model = create_model("small_cnn", 4, 1)
    modules = nn.ModuleDict(method.build_modules(model))
    modules.train()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    out = method.compute_loss(model, modules, x, (x + 0.01).clamp(0, 1), y)
    out.parts["mse"].backward()
    teacher_grads = [p.grad for p in modules["teacher"].parameters()]
    assert all(g is not None for g in teacher_grads)
    assert sum(g.abs().sum() for g in teacher_grads) > 0


def test_lbgat_attack_leaves_the_teacher_in_train_mode() -> None:
    cfg = run_config("lbgat")
    method = create_method("lbgat", cfg)
    model = create_model("small_cnn", 4, 1)
    modules = nn.ModuleDict(method.build_modules(model))
    model.train(), modules.train()
    teacher_training: list[bool] = []
    modules["teacher"].register_forward_pre_hook(lambda m, a: teacher_training.append(m.training))
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    method.attack(model, modules, x, y)
    assert model.training and all(m.training for m in modules["teacher"].modules())
    method.compute_loss(model, modules, x, x, y)
    assert teacher_training == [True]


def test_lbgat_teacher_checkpoint_is_loaded_and_checked(tmp_path: Path) -> None:
    teacher = create_model("small_cnn", 4, 1)
    save_file(teacher.state_dict(), str(tmp_path / "model.safetensors"))
    cfg = run_config("lbgat", teacher="small_cnn", teacher_checkpoint=str(tmp_path))
    built = create_method("lbgat", cfg).build_modules(create_model("small_cnn", 4, 1))["teacher"]
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), teacher.state_dict().values()))
    cfg = run_config("lbgat", teacher="small_cnn", teacher_checkpoint=str(tmp_path))
    cfg.model.num_classes = 7  # a 4-class teacher does not fit a 7-class run
    with pytest.raises(CheckpointError, match=r"does not match the architecture: 'fc.weight' has shape \[4, 128\]"):
        create_method("lbgat", cfg).build_modules(create_model("small_cnn", 7, 1))


def test_lbgat_teacher_takes_the_students_classes_and_channels() -> None:
    cfg = build_config(method={"name": "lbgat", "teacher": "small_cnn"})  # counts unset in the config
    teacher = create_method("lbgat", cfg).build_modules(create_model("small_cnn", 7, 2))["teacher"]
    assert teacher(torch.rand(3, 2, 8, 8)).shape == (3, 7)
    with pytest.raises(ConfigError, match="set model.num_classes and model.in_channels"):
        create_method("lbgat", cfg).build_modules(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)))


# --------------------------------------------------------------------------- ARREST


def test_arrest_loss_equals_transcription() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 3, generator=g, dtype=torch.float64)
    z_adv = torch.rand(5, 8, generator=g, dtype=torch.float64)
    z_ref = torch.rand(5, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    parts = arrest_loss(logits, z_adv, z_ref, y, gamma=10.0)
    cos = (z_adv * z_ref).sum(1) / (z_adv.norm(dim=1) * z_ref.norm(dim=1))
    assert torch.allclose(parts["rep"], 10.0 * (1 - cos).mean(), atol=TOL, rtol=0)
    assert torch.allclose(parts["ce_adv"], F.cross_entropy(logits, y), atol=TOL, rtol=0)


def test_noisy_replay_replaces_only_drifted_samples() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 5, 5)
    x_adv = (x + 0.03).clamp(0, 1)
    cos = torch.tensor([0.95, 0.5, 0.89, 1.0])
    x_tilde, replayed = noisy_replay(x, x_adv, cos, threshold=0.9, eps=0.03, norm="linf", noise="uniform")
    assert replayed.tolist() == [False, True, True, False]
    assert torch.equal(x_tilde[~replayed], x_adv[~replayed])
    noise = x_tilde[replayed] - x[replayed]
    assert noise.abs().max() <= 0.03 + 1e-7 and noise.abs().sum() > 0
    assert x_tilde.min() >= 0 and x_tilde.max() <= 1
    x_tilde, replayed = noisy_replay(x, x_adv, cos, threshold=0.9, eps=0.03, norm="linf", noise="none")
    assert torch.equal(x_tilde[replayed], x[replayed])
    _, replayed = noisy_replay(x, x_adv, cos, threshold=-1.0, eps=0.03, norm="linf", noise="uniform")
    assert not replayed.any()


def test_eps_ball_noise_l2_stays_in_the_ball() -> None:
    torch.manual_seed(0)
    noise = eps_ball_noise(torch.zeros(64, 3, 4, 4), 0.5, "l2")
    norms = noise.flatten(1).norm(dim=1)
    assert norms.max() <= 0.5 + 1e-6 and norms.min() > 0


def arrest_setup(tmp_path: Path, **fields: object) -> tuple[object, nn.Module, nn.ModuleDict, nn.Module]:
    phi = create_model("small_cnn", 4, 1)
    save_file(phi.state_dict(), str(tmp_path / "model.safetensors"))
    cfg = run_config("arrest", pretrained=str(tmp_path), **fields)
    method = create_method("arrest", cfg)
    model = method.prepare_model(create_model("small_cnn", 4, 1))
    modules = nn.ModuleDict(method.build_modules(model))
    model.train(), modules.train()
    return method, model, modules, phi


def test_arrest_starts_from_phi_and_its_reference_is_frozen(tmp_path: Path) -> None:
    method, model, modules, phi = arrest_setup(tmp_path)
    for a, b in zip(model.state_dict().values(), phi.state_dict().values()):
        assert torch.equal(a, b)
    reference = modules["reference"]
    assert isinstance(reference, FrozenReference)
    assert not reference.training and not any(m.training for m in reference.modules())
    assert not any(p.requires_grad for p in reference.parameters())
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    x_tilde = method.attack(model, modules, x, y)
    out = method.compute_loss(model, modules, x, x_tilde, y)
    out.total().backward()
    assert all(p.grad is None for p in reference.parameters())
    # eval mode: even the BatchNorm running statistics of the reference stay put
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert "replay_frac" in out.stats


def test_arrest_reference_runs_once_per_batch(tmp_path: Path) -> None:
    """The replay check and the loss share one forward of the frozen reference."""
    method, model, modules, _ = arrest_setup(tmp_path)
    calls = []
    modules["reference"].net.conv1.register_forward_hook(lambda *_: calls.append(1))
    y = torch.tensor([0, 1, 2, 3])
    for _ in range(2):  # two batches: the cache must not leak into the next one
        x = torch.rand(4, 1, 8, 8)
        calls.clear()
        x_tilde = method.attack(model, modules, x, y)
        out = method.compute_loss(model, modules, x, x_tilde, y)
        assert len(calls) == 1
        with torch.no_grad():
            expected = penultimate_features(modules["reference"].net, x)
        z_adv = penultimate_features(model, x_tilde)
        manual = method.config.gamma * (1 - F.cosine_similarity(z_adv, expected, dim=1)).mean()
        assert torch.allclose(out.parts["rep"], manual, atol=1e-6)


def test_arrest_replays_every_sample_at_threshold_one_after_drift(tmp_path: Path) -> None:
    method, model, modules, _ = arrest_setup(tmp_path, replay_threshold=1.0)
    with torch.no_grad():
        model.conv1.weight.add_(0.5 * torch.randn_like(model.conv1.weight))  # drift away from phi
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    x_tilde = method.attack(model, modules, x, y)
    assert method.compute_loss(model, modules, x, x_tilde, y).stats["replay_frac"] == 1.0
    assert (x_tilde - x).abs().max() <= method.ctx.attack.eps + 1e-6


def test_arrest_pretrained_of_another_architecture_is_one_line_error(tmp_path: Path) -> None:
    save_file(create_model("small_cnn", 10, 1).state_dict(), str(tmp_path / "model.safetensors"))
    cfg = run_config("arrest", pretrained=str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        create_method("arrest", cfg).prepare_model(create_model("small_cnn", 4, 1))
    assert "\n" not in str(info.value) and "method.pretrained" in str(info.value)


def test_load_weights_reads_pt_state_dicts_with_module_prefix(tmp_path: Path) -> None:
    source = create_model("small_cnn", 4, 1)
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, tmp_path / "w.pt")
    target = create_model("small_cnn", 4, 1)
    load_weights(target, tmp_path / "w.pt", what="test")
    assert torch.equal(target.fc.weight, source.fc.weight)
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a .safetensors"):
        load_weights(target, tmp_path / "w.txt", what="test")


# --------------------------------------------------------------------------- all four


@pytest.mark.parametrize("name", ROBUST_METHODS)
def test_every_trainable_parameter_gets_a_gradient(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    if name == "arrest":
        method, model, modules, _ = arrest_setup(tmp_path)
    else:
        method = create_method(name, run_config(name, **({"teacher": "small_cnn"} if name == "lbgat" else {})))
        model = method.prepare_model(create_model("small_cnn", 4, 1))
        modules = nn.ModuleDict(method.build_modules(model))
        model.train(), modules.train()
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    x_adv = method.attack(model, modules, x, y)
    assert all(p.grad is None for p in model.parameters())  # the attack leaves no parameter grads
    out = method.compute_loss(model, modules, x, x_adv, y)
    assert torch.isfinite(out.total())
    out.total().backward()
    trainable = [(n, p) for n, p in [*model.named_parameters(), *modules.named_parameters()] if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"{name}: no gradient for {missing}"
    if name == "lbgat":
        assert any(n.startswith("teacher.") for n, _ in trainable)
    assert out.logits.shape == (6, 4)
    # each has a regulariser part for the gradient diagnostics (kl, robust_kl, rep, align) but
    # LBGAT0 (beta = 0): its MSE to the teacher's logits is the main robust term, not a regulariser
    if name == "lbgat":
        assert set(out.parts) == {"mse", "ce_teacher"} and not any(method.is_regularizer(p) for p in out.parts)
    else:
        assert any(method.is_regularizer(part) for part in out.parts)
        assert not all(method.is_regularizer(part) for part in out.parts)


@pytest.mark.parametrize(
    "method, fields, pattern",
    [
        ("trades", {"beta": -1.0}, r"method.beta must be >= 0, got -1.0"),
        ("mart", {"beta": -0.5}, r"method.beta must be >= 0"),
        ("lbgat", {"beta": -6.0}, r"method.beta must be >= 0"),
        ("lbgat", {"teacher": "resnet19"}, r"method.teacher: unknown model 'resnet19'. Did you mean 'resnet18'"),
        ("lbgat", {"teacher_checkpoint": "/nonexistent/teacher.pt"}, r"method.teacher_checkpoint not found"),
        ("arrest", {"gamma": -1.0}, r"method.gamma must be >= 0"),
        ("arrest", {"replay_threshold": 1.5}, r"method.replay_threshold must be in \[-1, 1\], got 1.5"),
        ("arrest", {"replay_threshold": -2.0}, r"method.replay_threshold must be in \[-1, 1\]"),
        ("arrest", {"pretrained": "/nonexistent/run"}, r"method.pretrained not found: /nonexistent/run"),
        ("arrest", {"pretrain_epochs": 0}, r"set method.pretrained .* or method.pretrain_epochs > 0"),
        ("arrest", {"replay_noise": "gaussian"}, r"method.replay_noise expects one of 'uniform', 'none'"),
    ],
)
def test_bad_method_options_are_one_line_config_errors(method: str, fields: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        build_config(method={"name": method, **fields})
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- recipes

RECIPES = ["standard", "at", "trades", "mart", "lbgat0", "lbgat6", "arrest"]


@pytest.mark.parametrize("stem", RECIPES)
def test_recipe_builds_and_names_its_method(stem: str) -> None:
    path = REPO / "recipes" / f"{stem}_cifar10_resnet18.yaml"
    cfg = build_config(path)
    method = stem.rstrip("06")
    assert cfg.method.name == method
    assert cfg.model.name == "resnet18" and cfg.data.name == "cifar10"
    first = path.read_text().splitlines()[0]
    assert first == f"# atzoo train {method} --recipe recipes/{path.name}"


def test_recipes_hold_the_paper_settings() -> None:
    trades = build_config(REPO / "recipes" / "trades_cifar10_resnet18.yaml")
    assert (trades.method.beta, trades.attack.eps, trades.attack.step_size) == (6.0, 0.031, 0.007)
    assert (trades.optim.epochs, trades.optim.weight_decay, trades.optim.lr) == (76, 2e-4, 0.1)
    mart = build_config(REPO / "recipes" / "mart_cifar10_resnet18.yaml")
    assert (mart.method.beta, mart.optim.lr, mart.optim.weight_decay, mart.optim.epochs) == (5.0, 0.01, 3.5e-3, 120)
    lbgat0 = build_config(REPO / "recipes" / "lbgat0_cifar10_resnet18.yaml")
    lbgat6 = build_config(REPO / "recipes" / "lbgat6_cifar10_resnet18.yaml")
    assert (lbgat0.method.beta, lbgat6.method.beta) == (0.0, 6.0)
    assert lbgat0.optim.warmup_lr == 0.02 and lbgat0.optim.milestones == [75, 90]
