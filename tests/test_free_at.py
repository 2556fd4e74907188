"""Free-AT (Shafahi et al., NeurIPS 2019): the perturbation is carried across replays and
minibatches and moved by the training backward's own input gradient; each batch is replayed
m times by the engine; a replay costs one step of standard training, so m replays over
E / m epochs cost what E epochs of standard training cost."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from atzoo.bench.passes import PassCounter, cost_units
from atzoo.config import build_config
from atzoo.engine.replay import replayed_batches
from atzoo.methods import StepContext, create_method

EPS = 8 / 255
TINY = ["data.train_subset=64", "data.test_subset=16", "data.batch_size=16", "run.trackers=[]",
        "run.evaluate=false", "run.deterministic=true", "eval.co_check=off"]


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).flatten(1))


def free_method(replays: int = 4):
    cfg = build_config(None, [f"method.replays={replays}"], method={"name": "free_at"})
    return create_method("free_at", cfg)


def one_replay(method, model, x, y):
    """attack -> loss -> backward -> before_optimizer_step, as the engine's step does."""
    x_adv = method.attack(model, nn.ModuleDict(), x, y)
    out = method.compute_loss(model, nn.ModuleDict(), x, x_adv, y)
    out.total().backward()
    step = StepContext(epoch=0, global_step=0, model=model, modules=nn.ModuleDict(), x=x, x_adv=x_adv, y=y, lr=0.1)
    method.before_optimizer_step(step)
    return x_adv


def test_delta_is_carried_across_replays_and_minibatches_and_follows_the_input_gradient() -> None:
    torch.manual_seed(1)
    model = TinyConv()
    method = free_method()
    x1, x2 = torch.rand(6, 1, 8, 8) * 0.5 + 0.25, torch.rand(6, 1, 8, 8) * 0.5 + 0.25  # no [0, 1] clipping
    y = torch.randint(0, 10, (6,))
    first = one_replay(method, model, x1, y)
    assert torch.equal(first, x1)  # delta starts at zero
    # The update is eps * sign of the input gradient of the training loss, at x1 + 0.
    leaf = x1.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(leaf), y), leaf)
    expected = (EPS * grad.sign()).clamp(-EPS, EPS)
    assert torch.allclose(method.delta, expected)
    second = one_replay(method, model, x1, y)  # the next replay starts from the carried delta
    assert torch.allclose(second, x1 + expected)
    assert method.delta.abs().max() <= EPS + 1e-7  # projected onto the eps-ball
    carried = method.delta.clone()
    third = one_replay(method, model, x2, y)  # a new minibatch keeps the delta of the last one
    assert torch.allclose(third, (x2 + carried).clamp(0, 1))
    # The state survives a checkpoint.
    restored = free_method()
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.delta, method.delta)


def test_a_replay_costs_one_forward_and_one_backward_like_standard_training() -> None:
    torch.manual_seed(2)
    model = TinyConv()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    counts = {}
    for name in ("free_at", "standard"):
        method = free_method() if name == "free_at" else create_method("standard", build_config(
            None, [], method={"name": "standard"}))
        counter = PassCounter({"model": model}, batch_size=8)
        with counter.counting():
            counter.phase = "attack"
            x_adv = method.attack(model, nn.ModuleDict(), x, y)
            counter.phase = "loss"
            method.compute_loss(model, nn.ModuleDict(), x, x_adv, y).total().backward()
        counts[name] = cost_units(counter.result())
    assert counts["free_at"] == counts["standard"] == 3.0  # F + 2F


def test_replayed_batches_repeat_each_batch_and_resume_mid_replay() -> None:
    class Loader:
        def iter_from(self, start):
            return iter([(torch.tensor([i]), torch.tensor([i])) for i in range(start, 3)])

    order = [int(x) for x, _ in replayed_batches(Loader(), 0, 3)]
    assert order == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [int(x) for x, _ in replayed_batches(Loader(), 4, 3)] == order[4:]
    assert [int(x) for x, _ in replayed_batches(Loader(), 1, 1)] == [1, 2]


def test_the_engine_replays_and_epochs_over_m_cost_standard_training(tmp_path) -> None:
    """free_at with m = 2 for 1 epoch takes as many optimizer steps (each a standard step's
    passes) as standard training for 2 epochs, and trains on each batch twice in a row."""
    from atzoo.engine import read_metrics, train

    def steps(method: str, epochs: int, extra: list[str]) -> tuple[int, list]:
        cfg = build_config(None, [*TINY, f"optim.epochs={epochs}", "run.log_every=1", *extra],
                           method={"name": method}, model={"name": "small_cnn"}, data={"name": "digits"})
        run = train(cfg, out=tmp_path / method)
        rows = [r for r in read_metrics(run) if r["kind"] == "step"]
        return rows[-1]["step"], rows

    free_steps, _ = steps("free_at", 1, ["method.replays=2", "optim.schedule=constant"])
    standard_steps, _ = steps("standard", 2, ["optim.schedule=constant"])
    assert free_steps == standard_steps == 8  # 64 images / 16 = 4 batches x 2
