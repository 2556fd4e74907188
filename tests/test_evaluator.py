"""Evaluator: payload equals direct computation, eval.json merging, masking flags, loading, CLI."""

from __future__ import annotations

import copy

import json
from datetime import datetime
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atzoo.attacks import pgd, run_autoattack
from atzoo.config import AttackConfig, EvalConfig
from atzoo.errors import CheckpointError, ConfigError
from atzoo.eval import evaluate, load_run_model, masking_flags, parse_attacks, read_eval_json
from atzoo.eval.results import weights_fingerprint

from digits_model import train_digits_mlp

EPS = 0.05
N_TEST = 64
REQUIRED = {"method", "model", "dataset", "norm", "eps", "n_examples", "clean_acc", "pgd20_acc", "autoattack_acc",
            "per_class", "invariance_cos", "attacks", "flags", "atzoo_version", "timestamp"}


class Quantized(nn.Module):
    """Gradient masking by construction: rounding the input has zero gradient everywhere."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.fc = net.fc

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net.forward_features(torch.round(x * 4) / 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


@pytest.fixture(scope="module")
def bundle():
    from atzoo.data import create_dataset

    return create_dataset("digits", test_subset=N_TEST)


@pytest.fixture(scope="module")
def trained(bundle) -> nn.Module:
    """A DigitsMLP trained for a few epochs on the digits training set (about a second)."""
    return train_digits_mlp(bundle.train.x.float() / 255, bundle.train.y)


def test_x(bundle) -> tuple[Tensor, Tensor]:
    return bundle.test.x.float() / 255, bundle.test.y


test_x.__test__ = False  # a helper, not a test


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- the payload


def test_payload_equals_direct_computation(trained, bundle) -> None:
    model = trained
    model.train()  # the evaluator must switch to eval mode and restore this
    cfg = EvalConfig(attacks=["clean", "pgd20", "aa"], eps=EPS, n_ex=16, aa_version="custom", batch_size=32)
    payload = evaluate(model, bundle, cfg, attack_cfg=AttackConfig(), progress=False, seed=3,
                       meta={"method": "standard", "model": "digits_mlp"}, aa_attacks=["apgd-ce"], aa_chunk_size=8)
    assert model.training and model.body[2].training
    model.eval()
    assert REQUIRED <= set(payload)
    x, y = test_x(bundle)
    x, y = x[:16], y[:16]  # one set of images, the first n_ex, for every attack
    with torch.no_grad():
        clean = model(x).argmax(1).eq(y)
    x_adv = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=20, generator=gen(3))
    with torch.no_grad():
        robust = model(x_adv).argmax(1).eq(y)
        cos = F.cosine_similarity(model.forward_features(x), model.forward_features(x_adv), dim=1).mean().item()
    aa = run_autoattack(model, x, y, eps=EPS, version="custom", attacks=["apgd-ce"], n_ex=16, chunk_size=8, seed=3)
    print(f"\ndigits MLP, eps {EPS}: clean {payload['clean_acc']:.2f}% PGD-20 {payload['pgd20_acc']:.2f}% "
          f"AA(16) {payload['autoattack_acc']:.2f}% invariance {payload['invariance_cos']:.4f} "
          f"steps {payload['pgd_steps']['acc']}")
    assert payload["n_examples"] == 16 and payload["dataset"] == "digits"
    assert payload["eval_set"] == {"split": "test", "selection": "first", "n_examples": 16, "test_size": N_TEST}
    assert payload["method"] == "standard" and payload["model"] == "digits_mlp"
    assert payload["norm"] == "linf" and payload["eps"] == EPS
    pct = lambda flags: 100 * flags.float().mean().item()  # noqa: E731
    assert payload["clean_acc"] == pytest.approx(pct(clean))
    assert payload["pgd20_acc"] == pytest.approx(pct(robust & clean))  # robust = correct clean and attacked
    assert payload["accuracy_on_attack_outputs"]["pgd20"] == pytest.approx(pct(robust))
    assert "accuracy_alone" not in payload
    assert payload["invariance_cos"] == pytest.approx(cos, abs=1e-5)
    # AutoAttack alone, as the papers report it; the worst case over every attack is its own key
    assert payload["autoattack_acc"] == pytest.approx(pct(aa.robust_flags & clean))
    assert payload["autoattack_acc"] == pytest.approx(aa.robust_acc)
    assert payload["worst_case_acc"] == pytest.approx(pct(aa.robust_flags & robust & clean))
    assert payload["aa_clean_acc"] == pytest.approx(aa.clean_acc) and payload["aa_n_examples"] == 16
    assert payload["worst_case_acc"] <= min(payload["autoattack_acc"], payload["pgd20_acc"])
    assert payload["weights_fingerprint"] == weights_fingerprint(model)
    for k in range(10):
        mask = y == k
        if mask.any():
            assert payload["per_class"]["clean"][str(k)] == pytest.approx(pct(clean[mask]))
            assert payload["per_class"]["pgd20"][str(k)] == pytest.approx(pct((robust & clean)[mask]))
    assert payload["attacks"]["pgd20"]["steps"] == 20 and payload["attacks"]["pgd20"]["step_size"] == 2 / 255
    assert payload["attacks"]["aa"]["attacks"] == ["apgd-ce"]
    assert set(payload["pgd_steps"]["acc"]) == {"5", "20", "50"} and payload["pgd_steps"]["n_examples"] == 16
    assert set(payload["flags"]) >= {"robust_above_clean", "aa_below_pgd20", "pgd_not_decreasing", "any", "messages"}
    datetime.fromisoformat(payload["timestamp"])
    assert all(p.grad is None for p in model.parameters())


def test_l2_threat_model_uses_eps_over_4(trained, bundle) -> None:
    cfg = EvalConfig(attacks=["pgd20"], norm="l2", eps=0.5, batch_size=64, invariance=False)
    payload = evaluate(trained, bundle, cfg, attack_cfg=AttackConfig(), progress=False)
    assert payload["attacks"]["pgd20"]["step_size"] == pytest.approx(0.125)
    assert payload["norm"] == "l2" and payload["invariance_cos"] is None
    assert 0 <= payload["pgd20_acc"] <= payload["clean_acc"]


def test_masked_gradients_are_flagged(trained, bundle) -> None:
    masked = Quantized(trained).eval()
    cfg = EvalConfig(attacks=["clean", "pgd20"], eps=EPS, batch_size=64, n_ex=64)
    payload = evaluate(masked, bundle, cfg, attack_cfg=AttackConfig(), progress=False)
    steps = payload["pgd_steps"]["acc"]
    print(f"\nquantised-input model: PGD-5/20/50 {steps}, flags {payload['flags']['messages']}")
    assert payload["flags"]["pgd_not_decreasing"] is True and payload["flags"]["any"] is True
    normal = evaluate(trained, bundle, cfg, attack_cfg=AttackConfig(), progress=False)
    assert normal["flags"]["pgd_not_decreasing"] is False


# --------------------------------------------------------------------------- flags


def test_masking_flags_rules() -> None:
    assert masking_flags({})["any"] is False and masking_flags({})["robust_above_clean"] is None
    n = {"examples": {"n": 1000, "flags": {}}}
    # robust above clean: the attack's outputs are classified better than the clean inputs, beyond noise
    above = {**n, "clean_acc": 50.0, "pgd20_acc": 50.0, "accuracy_on_attack_outputs": {"pgd20": 60.0}}
    assert masking_flags(above)["robust_above_clean"] is True
    within_noise = {**n, "clean_acc": 50.0, "pgd20_acc": 50.0, "accuracy_on_attack_outputs": {"pgd20": 52.0}}
    assert masking_flags(within_noise)["robust_above_clean"] is False
    # AA below PGD-20: 4 healthy points + 3 * sqrt(2) * SE; SE(46.5%, 1000) = 1.58 -> threshold 10.7
    assert masking_flags({**n, "autoattack_acc": 35.0, "pgd20_acc": 46.5})["aa_below_pgd20"] is True
    assert masking_flags({**n, "autoattack_acc": 40.0, "pgd20_acc": 46.5})["aa_below_pgd20"] is False
    flat = {"pgd_steps": {"n_examples": 500, "acc": {"5": 30.0, "20": 30.0, "50": 30.0}}}
    falling = {"pgd_steps": {"n_examples": 500, "acc": {"5": 35.0, "20": 31.0, "50": 30.0}}}
    broken = {"pgd_steps": {"n_examples": 500, "acc": {"5": 0.0, "20": 0.0, "50": 0.0}}}
    assert masking_flags(flat)["pgd_not_decreasing"] is True
    assert masking_flags(falling)["pgd_not_decreasing"] is False
    assert masking_flags(broken)["pgd_not_decreasing"] is False
    flags = masking_flags({**flat, **above})
    assert flags["any"] is True and len(flags["messages"]) == 2
    assert "PGD-5 30.00%" in flags["messages"][1] and "on 1,000 images" in flags["messages"][0]


def test_parse_attacks() -> None:
    assert parse_attacks(["pgd20", "autoattack"]) == ["clean", "pgd20", "aa"]
    assert parse_attacks(["aa", "aa"]) == ["aa"]
    with pytest.raises(ConfigError, match="Did you mean 'pgd20'"):
        parse_attacks(["pdg20"])
    with pytest.raises(ConfigError, match="zero steps"):
        parse_attacks(["pgd0"])


# --------------------------------------------------------------------------- eval.json


def test_eval_json_merges_and_keeps_other_threat_models(trained, bundle, tmp_path: Path) -> None:
    base = dict(eps=EPS, batch_size=64, n_ex=8, aa_version="custom")
    evaluate(trained, bundle, EvalConfig(attacks=["pgd20"], **base), attack_cfg=AttackConfig(), progress=False,
             out=tmp_path)
    first = read_eval_json(tmp_path / "eval.json")
    assert first["pgd20_acc"] is not None and first["autoattack_acc"] is None
    evaluate(trained, bundle, EvalConfig(attacks=["aa"], **base), attack_cfg=AttackConfig(), progress=False,
             out=tmp_path, aa_attacks=["apgd-ce"], aa_chunk_size=8)
    second = read_eval_json(tmp_path / "eval.json")
    assert second["pgd20_acc"] == first["pgd20_acc"] and second["clean_acc"] == first["clean_acc"]
    assert second["per_class"] == first["per_class"] and second["autoattack_acc"] is not None
    assert set(second["attacks"]) == {"clean", "pgd20", "aa"}
    assert (tmp_path / "autoattack_state.json").is_file()
    evaluate(trained, bundle, EvalConfig(attacks=["clean"], **{**base, "eps": 0.1}), attack_cfg=AttackConfig(),
             progress=False, out=tmp_path)
    third = read_eval_json(tmp_path / "eval.json")
    assert third["eps"] == 0.1 and third["pgd20_acc"] is None and third["autoattack_acc"] is None
    assert third["previous"][0]["autoattack_acc"] == second["autoattack_acc"]


def test_other_weights_never_merge_and_never_show(trained, bundle, tmp_path: Path) -> None:
    """Weights a (clean + PGD-20), then weights b (clean) in one folder: b's eval.json holds
    only b's numbers; a's are kept whole under 'previous'."""
    base = dict(eps=EPS, batch_size=64, n_ex=16)
    a = evaluate(trained, bundle, EvalConfig(attacks=["clean", "pgd20"], **base), attack_cfg=AttackConfig(),
                 progress=False, out=tmp_path)
    other = copy.deepcopy(trained)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.0)
    b = evaluate(other, bundle, EvalConfig(attacks=["clean"], **base), attack_cfg=AttackConfig(), progress=False,
                 out=tmp_path)
    assert a["weights_fingerprint"] != b["weights_fingerprint"]
    assert b["pgd20_acc"] is None and b["invariance_cos"] is None and b["flags"]["messages"] == []
    assert set(b["examples"]["flags"]) == {"clean"}
    assert b["previous"][-1]["weights_fingerprint"] == a["weights_fingerprint"]
    assert b["previous"][-1]["pgd20_acc"] == a["pgd20_acc"]
    # the same weights again: merged (the PGD-20 number of a comes back with a's weights)
    again = evaluate(trained, bundle, EvalConfig(attacks=["clean"], **base), attack_cfg=AttackConfig(),
                     progress=False, out=tmp_path)
    assert again["weights_fingerprint"] == a["weights_fingerprint"] and again["pgd20_acc"] is None
    assert len(again["previous"]) == 2  # a, then b: a payload is only merged with the top level


def test_benchmark_threat_model_is_the_default_not_the_training_eps(trained, bundle) -> None:
    from atzoo.eval.evaluator import ThreatModel, parse_threat_models

    trades = AttackConfig(eps=0.031)
    assert ThreatModel.resolve(EvalConfig(), trades, "cifar10").eps == pytest.approx(8 / 255)
    assert ThreatModel.resolve(EvalConfig(), AttackConfig(), "digits").eps == pytest.approx(32 / 255)
    assert ThreatModel.resolve(EvalConfig(norm="l2"), trades, "cifar10").eps == pytest.approx(0.5)
    assert ThreatModel.resolve(EvalConfig(), trades, "imagenette").eps == pytest.approx(8 / 255)
    assert ThreatModel.resolve(EvalConfig(eps=0.031), AttackConfig(), "cifar10").source == "eval.eps"
    assert ThreatModel.resolve(EvalConfig(), trades, bundle).eps == pytest.approx(32 / 255)  # the bundle's
    base = ThreatModel.resolve(EvalConfig(), trades, "cifar10")
    assert [t.label for t in parse_threat_models(["linf:0.031", "linf:8/255", "l2:0.5"], base)] == \
        ["linf 0.031", "l2 0.5"]
    with pytest.raises(ConfigError, match="NORM:EPS"):
        parse_threat_models(["0.031"], base)


def test_corrupt_eval_json_is_an_error_and_left_alone(trained, bundle, tmp_path: Path) -> None:
    (tmp_path / "eval.json").write_text("{ not json")
    with pytest.raises(Exception, match="not valid JSON"):
        evaluate(trained, bundle, EvalConfig(attacks=["clean"], eps=EPS), attack_cfg=AttackConfig(),
                 progress=False, out=tmp_path)
    assert (tmp_path / "eval.json").read_text() == "{ not json"


# --------------------------------------------------------------------------- loading


def save_run(path: Path, model: nn.Module, meta: dict, name: str = "model") -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / f"{name}.safetensors"))
    (path / f"{name}_meta.json").write_text(json.dumps(meta))


SMALL_META = {"model": "small_cnn", "num_classes": 10, "in_channels": 1, "normalize": False, "mean": None,
              "std": None, "method": "at", "dataset": "digits"}


def test_load_run_model_round_trip(tmp_path: Path) -> None:
    from atzoo.models import create_model

    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 1).eval()
    save_run(tmp_path / "run", model, SMALL_META)
    x = torch.rand(4, 1, 8, 8)
    for path in (tmp_path / "run", tmp_path / "run" / "model.safetensors"):
        loaded, meta = load_run_model(path)
        assert meta == SMALL_META and not loaded.training
        assert torch.equal(loaded(x), model(x))


def test_load_run_model_errors_are_one_line(tmp_path: Path) -> None:
    from atzoo.models import create_model

    model = create_model("small_cnn", 10, 1)
    save_run(tmp_path / "wrong_classes", model, {**SMALL_META, "num_classes": 5})
    with pytest.raises(CheckpointError, match=r"2 shape mismatches \(fc.weight \(10, 128\) vs \(5, 128\), fc.bias"):
        load_run_model(tmp_path / "wrong_classes")
    save_run(tmp_path / "other_arch", nn.Sequential(nn.Linear(2, 2)), SMALL_META)
    with pytest.raises(CheckpointError, match="missing keys .*; 2 unexpected keys") as info:
        load_run_model(tmp_path / "other_arch")
    assert "\n" not in str(info.value)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="not found"):
        load_run_model(tmp_path / "empty_dir")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "junk" / "model_meta.json").write_text(json.dumps(SMALL_META))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_run_model(tmp_path / "junk")


# --------------------------------------------------------------------------- the command


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    from atzoo.config import build_config, to_yaml
    from atzoo.models import create_model

    torch.manual_seed(0)
    path = tmp_path / "run"
    save_run(path, create_model("small_cnn", 10, 1), SMALL_META)
    cfg = build_config(method={"name": "at"}, data={"name": "digits", "test_subset": 24}, attack={"eps": EPS})
    (path / "config.yaml").write_text(to_yaml(cfg))
    return path


def test_cli_eval_writes_and_updates_eval_json(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from atzoo.cli import run

    assert run(["eval", str(run_dir), "--attacks", "clean,pgd20", "--no-progress", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    payload = read_eval_json(run_dir / "eval.json")
    assert payload["n_examples"] == 24 and payload["eps"] == pytest.approx(32 / 255) and payload["method"] == "at"
    assert payload["pgd20_acc"] is not None and "PGD20 %" in out and "eval.json" in out
    assert run(["eval", str(run_dir), "--attacks", "aa", "--n-ex", "8", "--aa-version", "custom",
                "--aa-attacks", "apgd-ce", "--no-progress"]) == 0
    updated = read_eval_json(run_dir / "eval.json")
    # another set of images: the earlier numbers move to 'previous', never mixed with these
    assert updated["previous"][-1]["pgd20_acc"] == payload["pgd20_acc"] and updated["aa_n_examples"] == 8
    assert "kept under 'previous'" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--attacks", "pdg20"], "unknown attack 'pdg20'. Did you mean 'pgd20'?"),
        (["--attacks", "pgd0"], "zero steps"),
        (["--eps", "0"], "eps must be in (0, 1]"),
        (["--eps", "1.5"], "eps must be in (0, 1]"),
        (["--norm", "l3"], "--norm expects one of 'linf', 'l2'"),
        (["--aa-version", "fast"], "--aa-version expects one of"),
        (["--n-ex", "0"], "--n-ex must be >= 1"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(run_dir: Path, args: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from atzoo.cli import run

    (run_dir / "eval.json").write_text('{"keep": true}')
    assert run(["eval", str(run_dir), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert json.loads((run_dir / "eval.json").read_text()) == {"keep": True}


def test_cli_mismatched_checkpoint_exit_2(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from atzoo.cli import run

    meta = json.loads((run_dir / "model_meta.json").read_text())
    (run_dir / "model_meta.json").write_text(json.dumps({**meta, "num_classes": 100}))
    assert run(["eval", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match model 'small_cnn'" in err[0]
    assert not (run_dir / "eval.json").exists()
