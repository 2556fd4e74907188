"""The GPU-ready switches, checked for correctness on CPU.

* ``model.channels_last``: NHWC weights and inputs give the outputs of the contiguous
  model, and a training step gives the same loss and weights.
* ``run.precision=bf16``: the attack stays in the eps-ball and in [0, 1] under autocast,
  and a training step runs its convolutions in bfloat16 with a finite loss.
* ``model.compile``: a compiled model gives the eager outputs; the engine compiles the
  network itself (so the attack's passes run compiled too), and a few AR-AT steps through
  the real engine end with the eager weights. Compiling takes tens of seconds on a small
  CPU, so these run only with ``ATZOO_TEST_COMPILE=1``.
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from torch import nn

from atzoo.attacks import pgd
from atzoo.bench.step_cost import (
    StepCostSettings,
    build_harness,
    make_accelerator,
    make_batch,
    shape_bundle,
    train_step,
)
from atzoo.models import create_model

EPS = 8 / 255
COMPILE_TESTS = os.environ.get("ATZOO_TEST_COMPILE", "") not in ("", "0")
needs_compile = pytest.mark.skipif(
    not COMPILE_TESTS,
    reason="torch.compile takes tens of seconds on a 2-core CPU; set ATZOO_TEST_COMPILE=1 to run",
)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def harness(method: str = "at", **switches):
    """A method's training harness on small_cnn (16x16, batch 4) with the given switches."""
    settings = StepCostSettings(model="small_cnn", batch_size=4, image_size=16, attack_steps=2, **switches)
    bundle = shape_bundle(settings)
    accelerator = make_accelerator("cpu", settings.precision)
    h = build_harness(method, settings, bundle, accelerator, None)
    x, y = make_batch(settings, bundle, accelerator.device)
    return h, x, y


def params(h) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in h.core.model.named_parameters()}


# --------------------------------------------------------------------------- channels-last


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_channels_last_model_gives_the_contiguous_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 10, 3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        conv = next(m for m in model_cl.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        got = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_channels_last_training_step_matches_the_contiguous_step() -> None:
    h_ref, x, y = harness("at")
    torch.manual_seed(1)
    loss_ref = train_step(h_ref, x, y)

    h_cl, x, y = harness("at", channels_last=True)
    convs = [m for m in h_cl.core.model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    seen: list[bool] = []
    hooks = [c.register_forward_pre_hook(
        lambda m, inputs: seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last))) for c in convs]
    torch.manual_seed(1)
    loss_cl = train_step(h_cl, x, y)
    for hook in hooks:
        hook.remove()
    assert len(seen) == len(convs) * 3 and all(seen)  # 2 attack passes + 1 training pass, all NHWC
    assert loss_cl == pytest.approx(loss_ref, rel=1e-4)
    for key, value in params(h_ref).items():
        torch.testing.assert_close(params(h_cl)[key], value, rtol=1e-4, atol=1e-5, msg=key)


# --------------------------------------------------------------------------- bf16 autocast


def test_attack_under_bf16_autocast_stays_in_the_eps_ball() -> None:
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 3).eval()
    x = torch.rand(4, 3, 16, 16)
    y = torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # autocast is really on
        x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=5)
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > EPS / 2  # the attack moved


@pytest.mark.parametrize("method", ["at", "trades", "arat"])
def test_bf16_training_step_runs_convolutions_in_bf16_with_a_finite_loss(method: str) -> None:
    h, x, y = harness(method, precision="bf16")
    conv = next(m for m in h.core.model.modules() if isinstance(m, nn.Conv2d))
    dtypes: list[torch.dtype] = []
    hook = conv.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    before = params(h)
    loss = train_step(h, x, y)
    hook.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert math.isfinite(loss)
    after = params(h)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(after[k], before[k]) for k in before)  # the optimizer stepped
    assert all(v.dtype == torch.float32 for v in after.values())  # master weights stay float32


# --------------------------------------------------------------------------- torch.compile


@needs_compile
def test_compiled_model_gives_the_eager_outputs() -> None:
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 3).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        got = torch.compile(model)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@needs_compile
def test_compiled_training_step_gives_the_eager_step() -> None:
    h_ref, x, y = harness("at")
    torch.manual_seed(1)
    loss_ref = train_step(h_ref, x, y)
    h_c, x, y = harness("at", compile=True)
    h_c.core.model.compile()  # what the engine does with model.compile=true
    assert getattr(h_c.core.model, "_compiled_call_impl", None) is not None  # attack calls go through it too
    torch.manual_seed(1)
    loss_c = train_step(h_c, x, y)
    assert loss_c == pytest.approx(loss_ref, rel=1e-4)
    for key, value in params(h_ref).items():
        torch.testing.assert_close(params(h_c)[key], value, rtol=1e-4, atol=1e-5, msg=key)


@needs_compile
def test_engine_compiled_arat_run_ends_with_the_eager_weights(tmp_path, monkeypatch) -> None:
    """Routed BN, route switches and feature-tap hooks all pass through the compiled network."""
    from safetensors.torch import load_file

    from atzoo.cli import run

    monkeypatch.chdir(tmp_path)
    common = ["train", "arat", "--model", "small_cnn", "--dataset", "digits", "--epochs", "1",
              "run.max_steps=3", "run.evaluate=false", "run.trackers=[]", "run.deterministic=true"]
    assert run([*common, "--out", "eager"]) == 0
    assert run([*common, "--out", "compiled", "model.compile=true"]) == 0
    eager, compiled = load_file("eager/model.safetensors"), load_file("compiled/model.safetensors")
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-4, atol=1e-4, msg=key)
