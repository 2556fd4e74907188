"""The benchmark code on a tiny model: one step per method, pass counts, JSON, CLI errors.

Correctness only: no assertion on a time other than that it was measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from atzoo.bench import (
    EvalThroughputSettings,
    PassCounter,
    StepCostSettings,
    cost_units,
    run_eval_throughput,
    run_step_cost,
)
from atzoo.bench.passes import find_stem
from atzoo.bench.step_cost import SavedActivations, resolve_methods
from atzoo.errors import ConfigError, RegistryError

ATTACK_STEPS = 3
TINY = StepCostSettings(model="small_cnn", batch_size=4, steps=1, warmup=0, attack_steps=ATTACK_STEPS,
                        image_size=16)


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    _reset_accelerate()


@pytest.fixture(scope="module")
def tiny_result():
    """One instrumented + one timed step of every registered method on small_cnn, batch 4."""
    result = run_step_cost(TINY)
    _reset_accelerate()
    return result


def passes(result, method: str, network: str = "model", phase: str = "attack") -> dict[str, float]:
    return result.row(method).passes.as_dict()[network][phase]


# --------------------------------------------------------------------------- step cost


def test_every_method_has_a_row_with_a_finite_time_and_loss(tiny_result) -> None:
    from atzoo.registry import METHODS

    assert [r.method for r in tiny_result.rows][:2] == ["at", "standard"]
    assert sorted(r.method for r in tiny_result.rows) == sorted(METHODS.names())
    for row in tiny_result.rows:
        assert len(row.times_s) == TINY.steps
        assert math.isfinite(row.median_s) and row.median_s > 0
        assert row.finite, row.method
        assert row.ratio is not None and math.isfinite(row.ratio) and row.ratio > 0
        assert row.state_mb > 0 and row.activations_mb is not None and row.activations_mb > 0
    assert tiny_result.row("at").ratio == 1.0


def test_at_makes_attack_steps_plus_one_passes(tiny_result) -> None:
    attack, loss = passes(tiny_result, "at"), passes(tiny_result, "at", phase="loss")
    assert attack == {"fwd": ATTACK_STEPS, "fwd_no_graph": 0, "bwd": ATTACK_STEPS}
    assert loss == {"fwd": 1, "fwd_no_graph": 0, "bwd": 1}
    row = tiny_result.row("at")
    assert row.passes.total("fwd") == ATTACK_STEPS + 1
    assert row.cost_units == 2 * ATTACK_STEPS + 3  # (F + F) per attack step + (F + 2F) for training
    assert row.bound_ratio == 1.0


def test_trades_computes_the_clean_distribution_once_per_batch(tiny_result) -> None:
    attack = passes(tiny_result, "trades")
    assert attack["fwd_no_graph"] == 1  # p(x), not once per attack step
    assert attack["fwd"] == ATTACK_STEPS + 1 and attack["bwd"] == ATTACK_STEPS
    assert passes(tiny_result, "trades", phase="loss") == {"fwd": 2, "fwd_no_graph": 0, "bwd": 2}
    units = 1 + 2 * ATTACK_STEPS + 2 * 3
    assert tiny_result.row("trades").bound_ratio == pytest.approx(units / (2 * ATTACK_STEPS + 3))


def test_pass_counts_of_the_other_methods(tiny_result) -> None:
    assert passes(tiny_result, "standard") == {"fwd": 0, "fwd_no_graph": 0, "bwd": 0}
    assert passes(tiny_result, "standard", phase="loss") == {"fwd": 1, "fwd_no_graph": 0, "bwd": 1}
    for method in ("mart", "arat", "asym_trades", "inv_naive"):
        assert passes(tiny_result, method) == {"fwd": ATTACK_STEPS, "fwd_no_graph": 0, "bwd": ATTACK_STEPS}
        # AR-AT / Asym-TRADES: one forward of cat([x', x]) = two batch equivalents
        assert passes(tiny_result, method, phase="loss") == {"fwd": 2, "fwd_no_graph": 0, "bwd": 2}, method
    # LBGAT (beta 0): the student's clean forward builds no graph; the teacher is trained
    assert passes(tiny_result, "lbgat", phase="loss") == {"fwd": 2, "fwd_no_graph": 1, "bwd": 1}
    assert passes(tiny_result, "lbgat", "teacher", "loss") == {"fwd": 1, "fwd_no_graph": 0, "bwd": 1}
    # ARREST: the frozen reference never takes a backward pass
    reference = tiny_result.row("arrest").passes
    assert reference.total("bwd", network="reference") == 0
    assert reference.total("fwd", network="reference") == reference.total("fwd_no_graph", network="reference") >= 1
    assert passes(tiny_result, "arrest", phase="loss")["bwd"] == 1


def test_json_payload_round_trips(tiny_result) -> None:
    payload = json.loads(json.dumps(tiny_result.as_dict()))
    assert payload["benchmark"] == "step_cost" and payload["reference"] == "at"
    assert payload["settings"]["attack_steps"] == ATTACK_STEPS
    rows = {r["method"]: r for r in payload["methods"]}
    assert rows["trades"]["target_ratio"] == 1.20 and rows["at"]["fwd"] == ATTACK_STEPS + 1
    assert payload["paper_a100_seconds"]["arat"] == 0.140


def test_methods_are_checked_and_at_is_always_measured() -> None:
    assert resolve_methods(["trades", "standard"]) == ["at", "standard", "trades"]
    with pytest.raises(RegistryError, match="unknown method 'tradez'"):
        resolve_methods(["tradez"])
    with pytest.raises(ConfigError, match="--batch-size must be >= 2"):
        StepCostSettings(batch_size=1).validate()
    with pytest.raises(ConfigError, match="unknown precision"):
        StepCostSettings(precision="fp8").validate()


def test_cli_step_cost_writes_json_and_prints_the_table(tmp_path: Path, cli, capsys) -> None:
    out = tmp_path / "results" / "cost.json"
    code = cli("bench", "step-cost", "--model", "small_cnn", "--batch-size", "4", "--image-size", "16",
               "--methods", "trades", "--steps", "1", "--warmup", "0", "--attack-steps", "2", "--json", str(out))
    printed = capsys.readouterr().out
    assert code == 0
    assert "trades" in printed and "x AT" in printed and "attack 3f/2b (1 ng)" in printed
    payload = json.loads(out.read_text())
    assert [r["method"] for r in payload["methods"]] == ["at", "trades"]


def test_cli_bad_input_exits_2_without_writing(tmp_path: Path, cli, capsys) -> None:
    assert cli("bench", "step-cost", "--methods", "at,nope", "--json", str(tmp_path / "x.json")) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert cli("bench", "step-cost", "--json", str(tmp_path)) == 2
    assert "is a directory" in capsys.readouterr().err
    assert cli("bench", "step-cost", "--device", "tpu") == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- pass counter


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 2, 3, padding=1)
        self.second = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x)).mean(dim=(1, 2, 3))


def test_pass_counter_counts_graph_and_no_graph_forwards_and_backwards() -> None:
    net = TwoConvs()
    assert find_stem(net) is net.first
    counter = PassCounter({"model": net}, batch_size=4)
    x = torch.rand(4, 1, 5, 5)
    with counter.counting():
        counter.phase = "attack"
        with torch.no_grad():
            net(x)  # one forward without graph
        xa = x.clone().requires_grad_(True)
        torch.autograd.grad(net(xa).sum(), xa)  # forward + input-gradient backward
        counter.phase = "loss"
        net(torch.cat([x, x])).sum().backward()  # one forward of 2B = two passes, and its backward
    net(x)  # hooks removed: not counted
    counts = counter.result()
    assert counts.as_dict()["model"]["attack"] == {"fwd": 2, "fwd_no_graph": 1, "bwd": 1}
    assert counts.as_dict()["model"]["loss"] == {"fwd": 2, "fwd_no_graph": 0, "bwd": 2}
    assert cost_units(counts) == 2 + 2 + 1 + 2 * 2


def test_saved_activations_counts_what_autograd_keeps() -> None:
    w = nn.Parameter(torch.ones(3))
    x = torch.rand(8, 3)
    with SavedActivations({w.untyped_storage().data_ptr()}) as saved:
        y = torch.exp(x * w)  # mul saves x (and w: excluded); exp saves its output
    y.sum().backward()
    assert saved.megabytes * 2**20 == 2 * 8 * 3 * 4


# --------------------------------------------------------------------------- eval throughput


def test_eval_throughput_runs_pgd_and_reports_images_per_second() -> None:
    settings = EvalThroughputSettings(model="small_cnn", batch_size=4, steps=2, batches=2, warmup=0, image_size=16)
    payload = run_eval_throughput(settings)
    assert payload["images_per_s"] > 0 and len(payload["batch_times_s"]) == 2
    assert payload["passes"] == {"fwd": 3, "bwd": 2}
    assert payload["threat_model"] == {"norm": "linf", "eps": 8 / 255, "step_size": 2 / 255}
    with pytest.raises(ConfigError, match="--steps must be >= 1"):
        run_eval_throughput(EvalThroughputSettings(steps=0))


def test_cli_eval_and_data_benchmarks(tmp_path: Path, cli, capsys, shared_data: Path) -> None:
    code = cli("bench", "eval", "--model", "small_cnn", "--batch-size", "4", "--steps", "2", "--batches", "1",
               "--warmup", "0", "--json", str(tmp_path / "eval.json"))
    assert code == 0 and "images/s" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["benchmark"] == "eval_throughput"
    code = cli("bench", "data", "--dataset", f"npz:{shared_data / 'cifar10_subset.npz'}", "--batch-size", "64",
               "--batches", "2", "--workers", "0", "--json", str(tmp_path / "data.json"))
    printed = capsys.readouterr().out
    assert code == 0 and "device-side loader" in printed and "speed-up" in printed
    results = json.loads((tmp_path / "data.json").read_text())["results"]
    assert results["device_loader"] > 0 and results["speedup_workers_0"] > 0
    assert cli("bench", "data", "--workers", "a,b") == 2
