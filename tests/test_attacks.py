"""PGD / FGSM: threat-model bounds, loss growth, no parameter gradients, mode and route restored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.attacks import attack_mode, fgsm, pgd, pgd20, unwrap_model
from atzoo.errors import AtzooError, ConfigError
from atzoo.registry import ATTACKS, list_attacks

EPS = {"linf": 8 / 255, "l2": 0.5}
TOL = 1e-6


class TinyNet(nn.Module):
    """conv-BN-ReLU, pooling, linear head; exposes forward_features and fc like atzoo models."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool(self.relu(self.bn(self.conv(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def make_batch(n: int = 12, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = TinyNet().eval()
    x = torch.rand(n, 3, 8, 8)
    y = torch.randint(0, 10, (n,))
    return model, x, y


def gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def perturbation(x_adv: Tensor, x: Tensor, norm: str) -> Tensor:
    d = (x_adv - x).flatten(1)
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)


def ce(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
@pytest.mark.parametrize("loss", ["ce", "ce_sum", "kl", "targeted_ce"])
def test_pgd_stays_in_ball_and_unit_box(norm: str, start: str, loss: str) -> None:
    model, x, y = make_batch()
    x[:3] = 0.0  # corners of the box: the ball pokes out of [0, 1] here
    x[3:6] = 1.0
    probs = torch.softmax(model(x), dim=1).detach() if loss == "kl" else None
    target = (y + 1) % 10 if loss == "targeted_ce" else None
    eps = EPS[norm]
    x_adv = pgd(model, x, y, eps=eps, step_size=eps / 2, steps=4, norm=norm, random_start=start,
                start_std=0.05, loss=loss, clean_probs=probs, target=target, restarts=2, generator=gen())
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert perturbation(x_adv, x, norm).max().item() <= eps + TOL
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert (x_adv != x).any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_large_step_is_projected(norm: str) -> None:
    model, x, y = make_batch()
    x_adv = pgd(model, x, y, eps=EPS[norm], step_size=10.0, steps=3, norm=norm, generator=gen())
    assert perturbation(x_adv, x, norm).max().item() <= EPS[norm] + TOL
    assert 0.0 <= x_adv.min().item() and x_adv.max().item() <= 1.0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_more_steps_do_not_lower_the_loss(norm: str) -> None:
    model, x, y = make_batch(n=32)
    eps = EPS[norm]
    losses = [ce(model, pgd(model, x, y, eps=eps, step_size=eps / 4, steps=s, norm=norm, generator=gen(3)), y)
              for s in (1, 5, 20)]
    start = ce(model, (x + (2 * torch.rand(x.shape, generator=gen(3)) - 1) * eps).clamp(0, 1), y) \
        if norm == "linf" else ce(model, x, y)
    print(f"\n{norm}: CE at start {start:.4f}, after 1/5/20 steps {losses}")
    assert losses[0] > start
    assert losses[0] <= losses[1] <= losses[2]


def test_restarts_keep_per_example_the_best_run() -> None:
    model, x, y = make_batch(n=32)
    eps, step = 8 / 255, 1 / 255
    stream = gen(5)  # single runs drawing from one stream reproduce the restarts one by one
    runs = [pgd(model, x, y, eps=eps, step_size=step, steps=2, generator=stream) for _ in range(3)]
    combined = pgd(model, x, y, eps=eps, step_size=step, steps=2, restarts=3, generator=gen(5))
    with torch.no_grad():
        logits = [model(r) for r in runs]
        fooled = torch.stack([lg.argmax(1).ne(y) for lg in logits])
        loss = torch.stack([F.cross_entropy(lg, y, reduction="none") for lg in logits])
        chosen_fooled = model(combined).argmax(1).ne(y)
        chosen_loss = F.cross_entropy(model(combined), y, reduction="none")
    assert torch.equal(chosen_fooled, fooled.any(dim=0))
    for i in range(x.shape[0]):
        candidates = loss[fooled[:, i], i] if fooled[:, i].any() else loss[:, i]
        assert chosen_loss[i].item() == pytest.approx(candidates.max().item(), abs=1e-5)
    assert any(not torch.equal(combined, r) for r in runs[:1])


# --------------------------------------------------------------------------- losses


def test_kl_attack_uses_the_given_clean_distribution_as_constant() -> None:
    model, x, y = make_batch()
    probs = F.one_hot((y + 3) % 10, 10).float() * 0.9 + 0.01  # deliberately not softmax(model(x))
    x_adv = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=1, random_start="none", loss="kl",
                clean_probs=probs)
    x_req = x.clone().requires_grad_(True)
    kl = F.kl_div(F.log_softmax(model(x_req), dim=1), probs, reduction="batchmean")
    (grad,) = torch.autograd.grad(kl, x_req)
    expected = (x + 2 / 255 * grad.sign()).clamp(x - 8 / 255, x + 8 / 255).clamp(0, 1)
    assert torch.allclose(x_adv, expected, atol=1e-7)


def test_targeted_ce_moves_towards_the_target() -> None:
    model, x, y = make_batch(n=32)
    target = (y + 1) % 10
    x_adv = pgd(model, x, y, eps=0.3, step_size=0.05, steps=10, loss="targeted_ce", target=target,
                random_start="none")
    assert ce(model, x_adv, target) < ce(model, x, target)


def test_ce_and_ce_sum_give_the_same_linf_attack() -> None:
    model, x, y = make_batch()
    a = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3, loss="ce", generator=gen(1))
    b = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3, loss="ce_sum", generator=gen(1))
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- FGSM


def test_fgsm_is_one_signed_step_of_eps() -> None:
    model, x, y = make_batch()
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y), x_req)
    expected = (x + 8 / 255 * grad.sign()).clamp(0, 1)
    assert torch.allclose(fgsm(model, x, y, eps=8 / 255), expected, atol=1e-7)


def test_rs_fgsm_starts_uniformly_and_steps_one_and_a_quarter_eps() -> None:
    model, x, y = make_batch()
    eps = 8 / 255
    a = fgsm(model, x, y, eps=eps, random_start=True, generator=gen(2))
    b = pgd(model, x, y, eps=eps, step_size=1.25 * eps, steps=1, random_start="uniform", generator=gen(2))
    assert torch.equal(a, b)
    assert ATTACKS.get("fgsm_rs")(model, x, y, eps=eps, generator=gen(2)).equal(a)
    assert perturbation(a, x, "linf").max().item() <= eps + TOL


# --------------------------------------------------------------------------- contract


class ModeRecorder(nn.Module):
    """Wraps a network; records every submodule's training flag at each forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet()
        self.teacher = TinyNet()
        self.seen: list[dict[str, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append({name: m.training for name, m in self.named_modules()})
        return self.net(x) + 0 * self.teacher(x)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_mode_set_during_attack_and_every_flag_restored(mode: str) -> None:
    torch.manual_seed(0)
    model = ModeRecorder()
    model.train()
    model.teacher.eval()  # a mixed state, as with a frozen teacher
    model.net.bn.eval()
    before = {name: m.training for name, m in model.named_modules()}
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=2, mode=mode)
    assert model.seen and all(all(v == (mode == "train") for v in s.values()) for s in model.seen)
    assert {name: m.training for name, m in model.named_modules()} == before


def test_mode_restored_when_the_attack_raises() -> None:
    model, x, y = make_batch()
    model.train()

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with attack_mode(model, "eval", None):
            assert not model.training
            raise Boom
    assert model.training and model.bn.training


def test_no_parameter_gradient_is_created_or_changed() -> None:
    model, x, y = make_batch()
    model.train()
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3, mode="train")
    fgsm(model, x, y, eps=8 / 255, random_start=True)
    assert all(p.grad is None for p in model.parameters())
    # Existing gradients (accumulation in progress) stay untouched.
    F.cross_entropy(model(x), y).backward()
    saved = [p.grad.clone() for p in model.parameters()]
    pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), saved))


def test_works_under_no_grad() -> None:
    model, x, y = make_batch()
    with torch.no_grad():
        x_adv = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=2, generator=gen())
    assert (x_adv != x).any()


def test_route_set_for_the_attack_and_restored() -> None:
    from atzoo.models.routed_bn import convert_to_routed_bn, get_route, set_route

    model, x, y = make_batch()
    convert_to_routed_bn(model)
    set_route(model, "clean")
    seen: list[str | None] = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(get_route(m)))
    pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=2, route="adv")
    assert seen and set(seen) == {"adv"}
    assert get_route(model) == "clean"
    seen.clear()
    pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=2, route=None)  # keeps the current route
    assert set(seen) == {"clean"} and get_route(model) == "clean"


def test_route_ignored_without_routed_bn() -> None:
    model, x, y = make_batch()
    a = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=2, route="adv", generator=gen())
    b = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=2, generator=gen())
    assert torch.equal(a, b)


def test_unwraps_data_parallel() -> None:
    model, x, y = make_batch()
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    a = pgd(wrapped, x, y, eps=8 / 255, step_size=2 / 255, steps=2, generator=gen())
    b = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=2, generator=gen())
    assert torch.equal(a, b)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_works_under_autocast_bfloat16(norm: str) -> None:
    model, x, y = make_batch(n=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(model, x, y, eps=EPS[norm], step_size=EPS[norm] / 4, steps=5, norm=norm, generator=gen())
    assert x_adv.dtype == torch.float32
    assert perturbation(x_adv, x, norm).max().item() <= EPS[norm] + TOL
    assert 0 <= x_adv.min().item() and x_adv.max().item() <= 1
    assert ce(model, x_adv, y) > ce(model, x, y)
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": 0.0}, "eps must be > 0"),
        ({"eps": 1.5}, r"L-inf eps must be in \(0, 1\]"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"step_size": 0.0}, "step_size must be > 0"),
        ({"restarts": 0}, "restarts must be"),
        ({"norm": "l3"}, "norm must be one of linf, l2"),
        ({"loss": "hinge"}, "loss must be one of ce, ce_sum, kl, targeted_ce"),
        ({"random_start": "gauss"}, "random_start must be one of uniform, normal, none"),
        ({"mode": "test"}, "mode must be one of eval, train"),
        ({"loss": "kl"}, "needs clean_probs"),
        ({"loss": "targeted_ce"}, "needs target"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs: dict, match: str) -> None:
    model, x, y = make_batch(n=2)
    args = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 2, **kwargs}
    with pytest.raises(ConfigError, match=match) as info:
        pgd(model, x, y, **args)
    assert isinstance(info.value, AtzooError) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- registry, methods


def test_registered_attacks_and_cli_listing(capsys: pytest.CaptureFixture[str]) -> None:
    from atzoo.cli import run

    assert {"pgd", "pgd20", "fgsm", "fgsm_rs", "autoattack"} <= set(list_attacks())
    assert run(["list", "attacks"]) == 0
    out = capsys.readouterr().out
    assert "pgd20" in out and "autoattack" in out


def test_pgd20_preset_uses_step_2_255() -> None:
    model, x, y = make_batch()
    a = pgd20(model, x, y, eps=8 / 255, generator=gen(4))
    b = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=20, generator=gen(4))
    assert torch.equal(a, b)


def test_method_training_pgd_keeps_working() -> None:
    from atzoo.config import build_config
    from atzoo.methods import create_method

    cfg = build_config(method={"name": "at"}, attack={"steps": 2})
    method = create_method("at", cfg)
    model, x, y = make_batch()
    model.train()
    x_adv = method.attack(model, nn.ModuleDict(), x, y)
    assert perturbation(x_adv, x, "linf").max().item() <= cfg.attack.eps + TOL
    assert model.training and all(p.grad is None for p in model.parameters())
