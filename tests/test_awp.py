"""AT-AWP and TRADES-AWP (Wu et al., NeurIPS 2020): the weight perturbation against a hand
computation, exact restoration, the engine step at ``w + v``, ``gamma = 0`` equal to AT/TRADES
bit for bit, warm-up, replicas, and a bit-exact resume.

The hand computations write the tiny network out as explicit tensor operations on fresh
leaf tensors, independent of ``atzoo.methods.at_awp``.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.config import build_config
from atzoo.errors import ConfigError
from atzoo.methods import StepContext, create_method, proxy_copy
from atzoo.methods.at_awp import weight_perturbation
from atzoo.models import create_model

GAMMA = 0.1  # large enough that a wrong scaling shows


@pytest.fixture(autouse=True)
def _isolated_global_state():
    """Runs may switch on deterministic algorithms; undo it and Accelerate's state afterwards."""
    from accelerate.state import AcceleratorState

    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)
    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_net(bn: bool = True) -> nn.Sequential:
    """Linear(4, 3) [-> BatchNorm1d(3)] -> ReLU -> Linear(3, 2), fixed random weights."""
    torch.manual_seed(3)
    layers = [nn.Linear(4, 3), *([nn.BatchNorm1d(3)] if bn else []), nn.ReLU(), nn.Linear(3, 2)]
    net = nn.Sequential(*layers)
    if bn:
        with torch.no_grad():
            net[1].weight.uniform_(0.5, 1.5)
            net[1].bias.uniform_(-0.5, 0.5)
    return net


def hand_logits(w: dict[str, Tensor], x: Tensor) -> Tensor:
    """The tiny network as explicit operations (BatchNorm in train mode: biased batch variance)."""
    h = x @ w["W1"].T + w["b1"]
    if "g" in w:
        mean, var = h.mean(0), h.var(0, unbiased=False)
        h = (h - mean) / torch.sqrt(var + 1e-5) * w["g"] + w["be"]
    return torch.clamp(h, min=0) @ w["W2"].T + w["b2"]


def hand_weights(net: nn.Sequential) -> dict[str, Tensor]:
    bn = isinstance(net[1], nn.BatchNorm1d)
    out = {"W1": net[0].weight, "b1": net[0].bias, "W2": net[-1].weight, "b2": net[-1].bias}
    if bn:
        out.update(g=net[1].weight, be=net[1].bias)
    return {k: v.detach().clone().requires_grad_(True) for k, v in out.items()}


def hand_ce(logits: Tensor, y: Tensor) -> Tensor:
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_p[torch.arange(len(y)), y].mean()


def hand_perturbation(w: dict[str, Tensor], loss: Tensor, gamma: float) -> dict[str, Tensor]:
    """``gamma * ||W|| * g / ||g||`` for the two weight matrices only (Eq. 8, layer-wise)."""
    grads = torch.autograd.grad(loss, [w["W1"], w["W2"]])
    return {k: gamma * torch.sqrt((w[k] ** 2).sum()) * g / torch.sqrt((g**2).sum())
            for k, g in zip(("W1", "W2"), grads)}


def batch() -> tuple[Tensor, Tensor, Tensor]:
    torch.manual_seed(4)
    return torch.randn(6, 4), torch.randn(6, 4), torch.tensor([0, 1, 1, 0, 1, 0])


def make_method(name: str, *overrides: str):
    cfg = build_config(None, ["attack.steps=2", *overrides], method={"name": name})
    return create_method(name, cfg)


def step_of(net: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, epoch: int = 0) -> StepContext:
    return StepContext(epoch=epoch, global_step=0, model=net, modules=nn.ModuleDict(), x=x, x_adv=x_adv, y=y, lr=0.1)


def applied_perturbation(method, net: nn.Module, step: StepContext) -> dict[str, Tensor]:
    before = {k: v.clone() for k, v in net.state_dict().items()}
    method.before_step(step)
    return {k: v - before[k] for k, v in net.state_dict().items()}


# --------------------------------------------------------------------------- the perturbation


def test_at_awp_perturbation_equals_the_hand_computation() -> None:
    """AT-AWP: v = gamma ||W|| g/||g|| on both weight matrices, g = dCE(f(x'), y)/dW; BatchNorm's
    weight, every bias and the running statistics untouched; no gradient left on the model."""
    net, (x, x_adv, y) = tiny_net(), batch()
    w = hand_weights(net)
    expected = hand_perturbation(w, hand_ce(hand_logits(w, x_adv), y), GAMMA)
    method = make_method("at_awp", f"method.gamma={GAMMA}")
    change = applied_perturbation(method, net, step_of(net, x, x_adv, y))
    assert torch.allclose(change["0.weight"], expected["W1"], atol=1e-6)
    assert torch.allclose(change["3.weight"], expected["W2"], atol=1e-6)
    for key in ("0.bias", "1.weight", "1.bias", "3.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.count_nonzero(change[key]) == 0, key
    assert all(p.grad is None for p in net.parameters())
    # each layer moved by exactly gamma times its own norm
    for key, name in (("0.weight", "W1"), ("3.weight", "W2")):
        assert change[key].norm().item() == pytest.approx(GAMMA * w[name].norm().item(), rel=1e-5)


def test_the_official_proxy_sgd_step_gives_the_same_perturbation() -> None:
    """The official code's direction is a proxy SGD step on -L (lr 0.01 in AT-AWP); the
    rescaling cancels its learning rate, so it equals the gradient direction atzoo uses."""
    net, (x, x_adv, y) = tiny_net(), batch()
    proxy = copy.deepcopy(net).train()
    opt = torch.optim.SGD(proxy.parameters(), lr=0.01)
    (-F.cross_entropy(proxy(x_adv), y)).backward()
    opt.step()
    official = {}
    for (k, old), new in zip(net.state_dict().items(), proxy.state_dict().values()):
        if old.dim() > 1 and "weight" in k:
            diff = new - old
            official[k] = GAMMA * old.norm() / (diff.norm() + 1e-20) * diff
    names = {id(p): n for n, p in net.named_parameters()}
    perturbation = weight_perturbation(net, proxy_copy(net), lambda m: F.cross_entropy(m(x_adv), y), GAMMA)
    ours = {names[id(p)]: v for p, v in perturbation}
    assert set(ours) == set(official) == {"0.weight", "3.weight"}
    for k in official:  # (w + lr g) - w rounds: the two agree to float32 cancellation error
        assert (ours[k] - official[k]).norm() <= 1e-4 * official[k].norm(), k


def test_trades_awp_perturbation_increases_the_trades_loss_by_hand() -> None:
    """TRADES-AWP's proxy loss is CE(f(x), y) + beta * KL(p(x) || p(x')), batch mean."""
    net, (x, x_adv, y) = tiny_net(), batch()
    w = hand_weights(net)
    beta = 6.0
    # one forward of x and x' together would mix their BatchNorm statistics: two forwards, as the method does
    clean, adv = hand_logits(w, x), hand_logits(w, x_adv)
    log_p = clean - torch.logsumexp(clean, 1, keepdim=True)
    log_q = adv - torch.logsumexp(adv, 1, keepdim=True)
    kl = (log_p.exp() * (log_p - log_q)).sum(1).mean()
    expected = hand_perturbation(w, hand_ce(clean, y) + beta * kl, GAMMA)
    method = make_method("trades_awp", f"method.gamma={GAMMA}", "method.warmup_epochs=0")
    change = applied_perturbation(method, net, step_of(net, x, x_adv, y))
    assert torch.allclose(change["0.weight"], expected["W1"], atol=1e-6)
    assert torch.allclose(change["3.weight"], expected["W2"], atol=1e-6)
    assert torch.count_nonzero(change["1.running_mean"]) == 0


def test_the_perturbation_raises_the_loss() -> None:
    """The sign: the proxy *maximises* the loss on x' (first order, small gamma)."""
    net, (x, x_adv, y) = tiny_net(bn=False), batch()
    method = make_method("at_awp", "method.gamma=0.01")
    before = F.cross_entropy(net(x_adv), y).item()
    method.before_step(step_of(net, x, x_adv, y))
    assert F.cross_entropy(net(x_adv), y).item() > before + 1e-4


@pytest.mark.parametrize("synced", [False, True])
def test_restore_removes_the_perturbation(synced: bool) -> None:
    """Where the optimizer step leaves the weights alone (an accumulation batch) they come
    back bit for bit; after a real step v is subtracted (the official ``w - v``)."""
    net, (x, x_adv, y) = tiny_net(), batch()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    method = make_method("at_awp", "method.gamma=0.37")
    step = step_of(net, x, x_adv, y)
    step.synced = synced
    method.before_step(step)
    assert not torch.equal(net[0].weight, before["0.weight"])
    perturbed, v = net[0].weight.detach().clone(), method._saved[0][1].clone()
    method.after_optimizer_step(step)  # nothing changed the weights in between
    for k, value in net.state_dict().items():
        assert torch.equal(value, before[k]) if not synced else torch.allclose(value, before[k], atol=1e-6), k
    if synced:
        assert torch.equal(net[0].weight, perturbed - v)


def test_warmup_epochs_leave_the_weights_alone() -> None:
    net, (x, x_adv, y) = tiny_net(), batch()
    method = make_method("trades_awp")
    assert method.config.warmup_epochs == 9 and method.config.gamma == 5e-3
    during_warmup = applied_perturbation(method, net, step_of(net, x, x_adv, y, epoch=8))
    assert not any(torch.count_nonzero(d) for d in during_warmup.values())
    assert method._proxy is None  # no proxy pass during the warm-up
    assert torch.count_nonzero(applied_perturbation(method, net, step_of(net, x, x_adv, y, epoch=9))["0.weight"]) > 0


def test_replicas_get_the_perturbation_of_the_whole_batch() -> None:
    """With the gradient summed over processes, each half-batch replica perturbs as the whole batch would."""
    net, (_, x_adv, y) = tiny_net(bn=False), batch()
    proxy = proxy_copy(net)

    def ce(part: slice):
        return lambda m: F.cross_entropy(m(x_adv[part]), y[part], reduction="sum")

    other: list[Tensor] = []
    weight_perturbation(net, proxy, ce(slice(3, 6)), GAMMA, lambda t: other.append(t) or t)
    replica = weight_perturbation(net, proxy, ce(slice(0, 3)), GAMMA, lambda t: t + other[0])
    whole = weight_perturbation(net, proxy, ce(slice(0, 6)), GAMMA)
    alone = weight_perturbation(net, proxy, ce(slice(0, 3)), GAMMA)
    for (_, a), (_, b), (_, c) in zip(replica, whole, alone):
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.allclose(c, b, atol=1e-4)


@pytest.mark.parametrize("key, value", [("gamma", -0.1), ("warmup_epochs", -1)])
def test_bad_awp_settings_are_one_line_errors(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"method.{key} must be >= 0") as info:
        build_config(None, [f"method.{key}={value}"], method={"name": "at_awp"})
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- through the engine's step


def runner(method_name: str, *overrides: str):
    from accelerate import Accelerator

    from atzoo.engine.module import TrainingModule
    from atzoo.engine.step import StepRunner
    from atzoo.engine.trainer import build_optimizer

    cfg = build_config(None, ["attack.steps=2", *overrides], method={"name": method_name})
    method = create_method(method_name, cfg)
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1)
    core = TrainingModule(model, nn.ModuleDict(method.build_modules(model)), method)
    optimizer = build_optimizer(core, cfg)
    accelerator = Accelerator(cpu=True)
    wrapped, optimizer = accelerator.prepare(core, optimizer)
    return StepRunner(accelerator, core, wrapped, optimizer)


def digits_batches(n: int) -> list[tuple[Tensor, Tensor]]:
    torch.manual_seed(5)
    return [(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(n)]


@pytest.mark.parametrize("awp, plain, extra", [
    ("at_awp", "at", ["attack.bn_mode=train"]),
    ("trades_awp", "trades", ["method.warmup_epochs=0"]),
])
def test_gamma_zero_trains_exactly_as_the_method_without_awp(awp: str, plain: str, extra: list[str]) -> None:
    """gamma = 0: the proxy pass runs and changes nothing -- weights, BN statistics, momentum and
    losses equal AT (TRADES) bit for bit over three steps."""
    from atzoo.engine.step import train_step

    common = ["optim.momentum=0.9", "optim.weight_decay=5e-4"]
    a = runner(awp, "method.gamma=0", *common, *extra)
    b = runner(plain, *common, *[o for o in extra if "warmup" not in o])
    for i, (x, y) in enumerate(digits_batches(3)):
        torch.manual_seed(10 + i)
        loss_a = train_step(a, x, y, epoch=0).loss
        torch.manual_seed(10 + i)
        loss_b = train_step(b, x, y, epoch=0).loss
        assert torch.equal(loss_a, loss_b)
    assert a.method._proxy is not None  # the AWP path did run
    for (k, va), vb in zip(a.core.state_dict().items(), b.core.state_dict().values()):
        assert torch.equal(va, vb), k
    mom_a = [s["momentum_buffer"] for s in a.optimizer.state_dict()["state"].values()]
    mom_b = [s["momentum_buffer"] for s in b.optimizer.state_dict()["state"].values()]
    assert all(torch.equal(p, q) for p, q in zip(mom_a, mom_b))


def test_the_engine_step_is_taken_at_the_perturbed_weights() -> None:
    """One AT-AWP step with plain SGD: w <- w - lr * grad CE(f_{w+v}(x'), y), v as computed at w;
    the model's BN statistics see the training forward only (not the proxy's)."""
    from atzoo.engine.step import train_step

    lr = 0.5
    r = runner("at_awp", "method.gamma=0.05", f"optim.lr={lr}", "optim.momentum=0", "optim.weight_decay=0")
    (x, y), = digits_batches(1)
    x_adv = (x + 0.01).clamp(0, 1)
    r.method.attack = lambda model, modules, x_, y_: x_adv  # a fixed training attack for the reference
    reference = copy.deepcopy(r.core.model)
    v = dict((id(p), d) for p, d in weight_perturbation(
        r.core.model, proxy_copy(r.core.model), lambda m: F.cross_entropy(m(x_adv), y), 0.05))
    with torch.no_grad():
        for p, q in zip(r.core.model.parameters(), reference.parameters()):
            q.add_(v.get(id(p), torch.zeros_like(q)))
    reference.train()
    grads = torch.autograd.grad(F.cross_entropy(reference(x_adv), y), list(reference.parameters()))
    start = [p.detach().clone() for p in r.core.model.parameters()]
    train_step(r, x, y)
    for p, w0, g in zip(r.core.model.parameters(), start, grads):
        assert torch.allclose(p, w0 - lr * g, atol=1e-6)
    for (k, b), ref in zip(r.core.model.named_buffers(), reference.buffers()):
        assert torch.equal(b, ref), k


# --------------------------------------------------------------------------- training runs


FAST = ["data.train_subset=96", "data.test_subset=32", "data.batch_size=32", "optim.epochs=2", "attack.steps=2",
        "run.trackers=[]", "run.log_every=1", "run.checkpoint_every_steps=2", "run.keep_checkpoints=10",
        "run.deterministic=true", "run.evaluate=false"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name, extra", [("at_awp", []), ("trades_awp", ["method.warmup_epochs=1"])])
def test_resume_is_bit_identical(name: str, extra: list[str], tmp_path: Path) -> None:
    """A crash after the mid-epoch checkpoint of step 4 (epoch 1, where TRADES-AWP's warm-up has
    ended): the resumed run ends with the same weights, checkpoint and losses."""
    from atzoo.engine import read_metrics, train
    from atzoo.engine.checkpoint import list_checkpoints, load_checkpoint

    def cfg():
        return build_config(None, [*FAST, *extra], method={"name": name}, model={"name": "small_cnn"},
                            data={"name": "digits"})

    full = train(cfg(), out=tmp_path / "full")
    assert [p.name for p in list_checkpoints(full / "checkpoints")] == [
        "step-000000002", "step-000000003", "step-000000004", "step-000000006"]
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-000000006")
    for item in ("model.safetensors", "model_last.safetensors", "model_meta.json"):
        (crashed / item).unlink(missing_ok=True)
    train(cfg(), out=crashed, resume=True)
    assert digest(crashed / "model.safetensors") == digest(full / "model.safetensors")
    ends = [load_checkpoint(run / "checkpoints" / "step-000000006").tensors["training"] for run in (full, crashed)]
    for key, value in ends[0].items():
        assert torch.equal(value, ends[1][key]), key
    losses = [[r["loss"] for r in read_metrics(run) if r["kind"] == "step"] for run in (full, crashed)]
    assert losses[0] == losses[1] and len(losses[0]) == 6
