"""Precision per phase: training forward/backward, training attack, evaluation attacks.

The attack contract must hold in bf16 (eps-ball, [0, 1], x's dtype), ``fp32`` must switch
off an enclosing autocast, configs resolve ``attack.precision=same`` to a concrete value,
a device without the type is refused with one line before anything is written, and the
run's first line names each phase's precision.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from atzoo import precision
from atzoo.attacks import pgd
from atzoo.config import build_config, to_yaml
from atzoo.errors import ConfigError

EPS = 8 / 255


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


class DtypeRecorder:
    """Records the dtype of the first conv's output at every forward."""

    def __init__(self, model: nn.Module) -> None:
        self.seen: list[torch.dtype] = []
        self.handle = model[0].register_forward_hook(lambda m, i, o: self.seen.append(o.dtype))


def batch(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 12, 12, generator=gen).to(dtype), torch.randint(0, 10, (6,), generator=gen)


# --------------------------------------------------------------------------- names


def test_names_resolve() -> None:
    assert precision.canonical("no") == "fp32"
    assert precision.accelerate_name("fp32") == "no" and precision.accelerate_name("bf16") == "bf16"
    assert precision.attack_precision("same", "no") == "fp32"
    assert precision.attack_precision("same", "bf16") == "bf16"
    assert precision.attack_precision("bf16", "fp32") == "bf16"
    assert precision.dtype_of("bf16") is torch.bfloat16 and precision.dtype_of("no") is torch.float32
    with pytest.raises(ConfigError, match="unknown precision 'fp8'. Valid choices: no, fp32, bf16, fp16"):
        precision.canonical("fp8")


def test_describe_is_the_first_line_text() -> None:
    assert precision.describe("no", "same", "fp32") == "train fp32, attack fp32, eval fp32"
    assert precision.describe("bf16", "same", "fp32") == "train bf16, attack bf16, eval fp32"
    assert precision.describe("fp32", "bf16", "bf16") == "train fp32, attack bf16, eval bf16"


def test_fp16_on_cpu_is_refused_in_one_line() -> None:
    precision.check_supported("bf16", "cpu")
    precision.check_supported("fp32", "cpu")
    with pytest.raises(ConfigError) as info:
        precision.check_supported("fp16", "cpu", "attack.precision")
    message = str(info.value)
    assert message.startswith("attack.precision=fp16 cannot be used on cpu:") and "\n" not in message
    assert message.endswith("valid here: fp32, bf16")


# --------------------------------------------------------------------------- autocast and the attack


def test_fp32_context_switches_off_an_enclosing_autocast() -> None:
    model, (x, _) = tiny_cnn(), batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16
        with precision.autocast("fp32", "cpu"):
            assert model(x).dtype == torch.float32
    with precision.autocast("bf16", "cpu"):
        assert model(x).dtype == torch.bfloat16


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bf16_attack_keeps_the_contract(norm: str, dtype: torch.dtype) -> None:
    model, (x, y) = tiny_cnn(), batch(dtype)  # float32 weights, as in training
    recorder = DtypeRecorder(model)
    eps = EPS if norm == "linf" else 0.5
    x_adv = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=5, norm=norm, precision="bf16")
    assert recorder.seen == [torch.bfloat16] * 5  # the network really ran in bf16
    assert x_adv.dtype == dtype and x_adv.device == x.device and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert delta.norm(dim=1).max() <= eps + 1e-5
    assert delta.abs().max() > 0


def test_fp32_attack_inside_a_bf16_step_runs_in_fp32() -> None:
    model, (x, y) = tiny_cnn(), batch()
    recorder = DtypeRecorder(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=2, precision="fp32")
        pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=2)  # None: the caller's autocast
    assert recorder.seen == [torch.float32] * 2 + [torch.bfloat16] * 2


def test_fp32_precision_gives_the_same_attack_as_none() -> None:
    model, (x, y) = tiny_cnn(), batch()
    a = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=3, generator=torch.Generator().manual_seed(0))
    b = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=3, generator=torch.Generator().manual_seed(0),
            precision="fp32")
    assert torch.equal(a, b)


def test_unknown_attack_precision_is_a_config_error() -> None:
    model, (x, y) = tiny_cnn(), batch()
    with pytest.raises(ConfigError, match="unknown precision 'half'"):
        pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=1, precision="half")


# --------------------------------------------------------------------------- config


def test_attack_precision_same_resolves_to_the_run_precision() -> None:
    cfg = build_config(None, ["run.precision=bf16"], method={"name": "at"})
    assert cfg.attack.precision == "bf16" and cfg.eval.precision == "fp32"
    cfg = build_config(None, [], method={"name": "at"})
    assert cfg.run.precision == "no" and cfg.attack.precision == "fp32"
    cfg = build_config(None, ["run.precision=fp32", "attack.precision=bf16"], method={"name": "trades"})
    assert (cfg.run.precision, cfg.attack.precision) == ("fp32", "bf16")
    assert "precision: bf16" in to_yaml(cfg)  # config.yaml records the resolved value


@pytest.mark.parametrize("override, expected", [
    ("attack.precision=fp8", "attack.precision expects one of 'fp32', 'bf16', 'fp16', 'same'"),
    ("eval.precision=same", "eval.precision expects one of 'fp32', 'bf16', 'fp16'"),
    ("run.precision=half", "run.precision expects one of 'no', 'fp32', 'bf16', 'fp16'"),
])
def test_bad_precision_values_are_refused(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        build_config(None, [override], method={"name": "at"})


# --------------------------------------------------------------------------- engine and evaluator

FAST = ["data.train_subset=64", "data.test_subset=16", "data.batch_size=32", "optim.epochs=1", "attack.steps=2",
        "run.trackers=[]", "eval.attacks=clean,pgd20", "eval.batch_size=16", "eval.invariance=false"]


@pytest.fixture(autouse=True)
def _reset_accelerate():
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state()


def _config(*overrides: str):
    return build_config(None, [*FAST, *overrides], method={"name": "at"}, model={"name": "small_cnn"},
                        data={"name": "digits"})


def test_training_attack_and_forward_use_their_own_precisions(tmp_path: Path, monkeypatch, capsys, cli) -> None:
    from atzoo.engine import train
    from atzoo.methods.at import AT

    seen: dict[str, list[torch.dtype]] = {"attack": [], "loss": []}
    original_attack, original_loss = AT.attack, AT.compute_loss

    def attack(self, model, modules, x, y):
        with torch.no_grad():
            seen["attack"].append(model(x).dtype)
        return original_attack(self, model, modules, x, y)

    def loss(self, model, modules, x, x_adv, y):
        out = original_loss(self, model, modules, x, x_adv, y)
        seen["loss"].append(out.logits.dtype)
        return out

    monkeypatch.setattr(AT, "attack", attack)
    monkeypatch.setattr(AT, "compute_loss", loss)
    out = train(_config("run.precision=fp32", "attack.precision=bf16", "run.max_steps=2"), out=tmp_path / "r")
    assert seen == {"attack": [torch.bfloat16] * 2, "loss": [torch.float32] * 2}
    first = capsys.readouterr().err.strip().splitlines()[0]
    assert first.startswith("training at on 1 process(es) (cpu)")
    assert "precision train fp32, attack bf16, eval fp32 ->" in first
    saved = (out / "config.yaml").read_text()
    assert "precision: bf16" in saved and "precision: fp32" in saved
    assert json.loads((out / "eval.json").read_text())["precision"] == "fp32"
    # atzoo eval: --precision is refused in one line where the device lacks it, recorded otherwise.
    before = (out / "eval.json").read_bytes()
    capsys.readouterr()
    assert cli("eval", str(out), "--attacks", "clean", "--precision", "fp16", "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atzoo: error: --precision=fp16 cannot be used on cpu:") and len(err.splitlines()) == 1
    assert (out / "eval.json").read_bytes() == before
    assert cli("eval", str(out), "--attacks", "clean,pgd20", "--precision", "bf16", "--no-progress") == 0
    assert json.loads((out / "eval.json").read_text())["precision"] == "bf16"


def test_fp16_training_on_cpu_is_refused_before_writing(tmp_path: Path, cli, capsys) -> None:
    out = tmp_path / "never"
    code = cli("train", "at", "--model", "small_cnn", "--dataset", "digits", *FAST, "run.precision=fp16",
               "--out", str(out))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("atzoo: error: run.precision=fp16 cannot be used on cpu:")
    assert not out.exists()


def test_evaluation_attacks_run_in_fp32_unless_asked(monkeypatch) -> None:
    from atzoo.config import AttackConfig, EvalConfig
    from atzoo.data import create_dataset
    from atzoo.eval import evaluate
    from atzoo.models import create_model

    bundle = create_dataset("digits", test_subset=8)
    torch.manual_seed(0)
    model = create_model("small_cnn", bundle.num_classes, bundle.in_channels).eval()
    recorder: list[torch.dtype] = []
    model.conv1.register_forward_hook(lambda m, i, o: recorder.append(o.dtype))
    cfg = EvalConfig(attacks=["clean", "pgd20"], batch_size=8, invariance=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's autocast does not leak in
        payload = evaluate(model, bundle, cfg, attack_cfg=AttackConfig(), progress=False)
    assert payload["precision"] == "fp32" and set(recorder) == {torch.float32}
    recorder.clear()
    cfg.precision = "bf16"
    payload = evaluate(model, bundle, cfg, attack_cfg=AttackConfig(), progress=False)
    assert payload["precision"] == "bf16" and set(recorder) == {torch.bfloat16}


# --------------------------------------------------------------------------- bench step-cost


def test_step_cost_measures_fp32_twins_in_the_same_rounds() -> None:
    from atzoo.bench import StepCostSettings, run_step_cost

    settings = StepCostSettings(model="small_cnn", batch_size=4, methods=("at",), steps=2, warmup=0,
                                attack_steps=1, image_size=8, threads=1, precision="bf16", attack_precision="same")
    result = run_step_cost(settings)
    rows = {r.method: r for r in result.rows}
    assert list(rows) == ["at", "at@fp32"]
    assert rows["at"].precision == "train bf16, attack bf16"
    assert rows["at@fp32"].precision == "train fp32, attack fp32"
    assert rows["at"].speedup_cpu is not None and rows["at@fp32"].speedup_cpu is None
    assert rows["at@fp32"].ratio_cpu == 1.0  # the fp32 twin of AT is its own reference
    assert len(rows["at"].cpu_times_s) == len(rows["at@fp32"].cpu_times_s) == 2
    assert rows["at"].losses != rows["at@fp32"].losses  # really different arithmetic
    assert result.as_dict()["methods"][0]["speedup_vs_fp32_cpu_time"] == rows["at"].speedup_cpu


def test_step_cost_fp32_only_has_no_twins() -> None:
    from atzoo.bench import StepCostSettings

    assert not StepCostSettings(precision="no").fp32_twins
    assert StepCostSettings(precision="fp32", attack_precision="bf16").fp32_twins
    assert StepCostSettings(precision="bf16").phases == ("bf16", "bf16")


@pytest.mark.parametrize("args, expected", [
    (["--attack-precision", "fp8"], "atzoo: error: unknown attack precision 'fp8'. Valid choices: fp32, bf16, fp16, same"),
    (["--precision", "fp16"], "atzoo: error: --precision=fp16 cannot be used on cpu:"),
])
def test_bench_refuses_bad_precisions_in_one_line(args: list[str], expected: str, cli, capsys) -> None:
    code = cli("bench", "step-cost", "--model", "small_cnn", "--batch-size", "4", "--steps", "1", *args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(expected)


def test_profile_names_each_phase_once() -> None:
    assert precision.profile("no") == precision.profile("fp32") == precision.profile("fp32", "fp32") == "no"
    assert precision.profile("bf16") == precision.profile("bf16", "same") == "bf16"
    assert precision.profile("fp32", "bf16") == "no+attack-bf16"
    assert precision.profile("bf16", "fp32") == "bf16+attack-fp32"


def test_bench_record_puts_fp32_twins_in_the_fp32_profile(tmp_path: Path, monkeypatch) -> None:
    from atzoo.report.bench_records import lookup_ratio, record_step_cost

    monkeypatch.setenv("ATZOO_CACHE", str(tmp_path / "cache"))
    rows = [("at", 1.0), ("trades", 1.18), ("at@fp32", 1.0), ("trades@fp32", 1.20)]
    payload = {"settings": {"precision": "bf16", "attack_precision": "bf16", "model": "resnet18", "batch_size": 32,
                            "overrides": [], "variants": []},
               "environment": {"device": "cpu", "device_name": "EPYC", "timestamp": "t"},
               "methods": [{"method": m, "ratio_to_at_cpu_time": r, "finite": True} for m, r in rows]}
    path = record_step_cost(payload)
    assert path is not None and path.name == "cpu-epyc-bf16.json"
    cpu = {"device": "cpu", "device_name": "EPYC"}
    assert lookup_ratio({**cpu, "precision": "bf16"}, "trades")[0] == pytest.approx(1.18)
    assert lookup_ratio({**cpu, "precision": "no"}, "trades")[0] == pytest.approx(1.20)
    assert lookup_ratio({**cpu, "precision": "bf16"}, "trades@fp32") is None
