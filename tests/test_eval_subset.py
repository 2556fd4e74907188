"""One evaluation set for every attack; AA alone and the worst case apart; nothing earlier is
dropped; the benchmark radius per norm; masking flags beyond sampling noise, calibrated on the
AR-AT paper's own pairs, silent on saturated models, MART's known gap explained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from atzoo.config import AttackConfig, EvalConfig, build_config, to_yaml
from atzoo.eval import masking_flags, read_eval_json
from atzoo.eval.evaluator import ThreatModel
from atzoo.eval.results import (
    HEALTHY_GAP_POINTS,
    decode_flags,
    encode_flags,
    headline_accuracies,
    merge_payloads,
    noise_threshold,
    standard_error,
)

EPS = 0.05


def examples(n: int, **flags: np.ndarray) -> dict:
    return {"n": n, "flags": {k: encode_flags(v) for k, v in flags.items()}}


def test_flags_round_trip_and_the_worst_case_order() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 200):
        clean, pgd, aa = (rng.random(n) < p for p in (0.8, 0.6, 0.5))
        assert (decode_flags(encode_flags(clean), n) == clean).all()
        head = headline_accuracies(examples(n, clean=clean, pgd20=pgd, aa=aa))
        assert head["clean_acc"] == pytest.approx(100 * clean.mean())
        assert head["pgd20_acc"] == pytest.approx(100 * (clean & pgd).mean())
        assert head["autoattack_acc"] == pytest.approx(100 * (clean & aa).mean())  # AutoAttack alone
        assert head["worst_case_acc"] == pytest.approx(100 * (clean & pgd & aa).mean())
        assert head["worst_case_acc"] <= min(head["autoattack_acc"], head["pgd20_acc"]) <= head["clean_acc"]
        assert head["accuracy_on_attack_outputs"]["aa"] == pytest.approx(100 * aa.mean())
        assert "accuracy_alone" not in head


def test_merge_on_the_same_set_recomputes_the_worst_case_and_another_set_is_kept() -> None:
    n = 4
    clean, pgd, aa = np.array([1, 1, 1, 0], bool), np.array([1, 1, 0, 1], bool), np.array([0, 1, 1, 0], bool)
    base = {"dataset": "digits", "norm": "linf", "eps": EPS, "eval_set": {"n_examples": n},
            "weights_fingerprint": "w1"}
    first = {**base, **headline_accuracies(examples(n, clean=clean, pgd20=pgd)), "examples": examples(n, clean=clean,
                                                                                                      pgd20=pgd)}
    second = {**base, "examples": examples(n, clean=clean, aa=aa), "pgd20_acc": None}
    merged = merge_payloads(dict(first), second, ["aa"])
    assert merged["pgd20_acc"] == 50.0 and merged["autoattack_acc"] == 50.0  # examples 1 and 2 survive AA
    assert merged["worst_case_acc"] == 25.0  # only example 1 survives all
    other = {**base, "eval_set": {"n_examples": 2}, "clean_acc": 50.0}
    moved = merge_payloads(dict(merged), other, ["clean"])
    assert moved["clean_acc"] == 50.0 and moved["previous"][-1]["autoattack_acc"] == 50.0
    # other weights on the very same images never merge; nor does a file without a fingerprint
    for weights in ("w2", None):
        elsewhere = merge_payloads(dict(merged), {**second, "weights_fingerprint": weights}, ["aa"])
        assert elsewhere["pgd20_acc"] is None and elsewhere["previous"][-1]["pgd20_acc"] == 50.0
    older = {k: v for k, v in merged.items() if k != "weights_fingerprint"}
    assert merge_payloads(older, dict(second), ["aa"])["previous"][-1] == older


def test_l2_without_eps_takes_the_l2_radius() -> None:
    linf_run = AttackConfig(norm="linf", eps=8 / 255)
    assert ThreatModel.resolve(EvalConfig(norm="l2"), linf_run, "cifar10").eps == 0.5
    assert ThreatModel.resolve(EvalConfig(norm="linf"), AttackConfig(norm="l2", eps=0.5), "cifar10").eps == \
        pytest.approx(8 / 255)
    assert ThreatModel.resolve(EvalConfig(), linf_run, "cifar10").eps == pytest.approx(8 / 255)
    assert ThreatModel.resolve(EvalConfig(norm="l2", eps=128 / 255), linf_run).eps == pytest.approx(128 / 255)
    # data that declares nothing: the CIFAR benchmark, and the source says so
    unknown = ThreatModel.resolve(EvalConfig(), AttackConfig(eps=0.031), None)
    assert unknown.eps == pytest.approx(8 / 255) and "set eval.eps" in unknown.source


# --------------------------------------------------------------------------- masking flags

#: The AR-AT paper's PGD-20 / AutoAttack pairs (CIFAR-10 ResNet-18): AR-AT (Tables 17/18 vs
#: Tables 1/3: 52.13 / 49.02), ablation rows "none" (48.89 / 46.50) and "split-BN" (51.34 / 47.96).
ARAT_PAIRS = [(52.13, 49.02), (48.89, 46.50), (51.34, 47.96)]


@pytest.mark.parametrize("pgd20, aa", ARAT_PAIRS)
@pytest.mark.parametrize("n", [64, 1000, 10_000])
def test_the_arat_papers_own_pairs_raise_no_flag(pgd20: float, aa: float, n: int) -> None:
    flags = masking_flags({"clean_acc": 87.82, "pgd20_acc": pgd20, "autoattack_acc": aa, "aa_n_examples": n})
    assert flags["aa_below_pgd20"] is False and flags["any"] is False


def test_the_threshold_comes_from_the_binomial_standard_error() -> None:
    assert standard_error(50.0, 1000) == pytest.approx(100 * (0.25 / 1000) ** 0.5)
    assert standard_error(100.0, 64) == pytest.approx(100 / 64)  # floor at 100% (no variance)
    # 6 points on 64 images (4 images) is noise; 12 points on 10,000 images is not
    assert masking_flags({"clean_acc": 80.0, "pgd20_acc": 46.0, "autoattack_acc": 40.0,
                          "aa_n_examples": 64})["aa_below_pgd20"] is False
    flags = masking_flags({"clean_acc": 80.0, "pgd20_acc": 52.0, "autoattack_acc": 40.0, "aa_n_examples": 10_000})
    gap_limit = HEALTHY_GAP_POINTS + noise_threshold(52.0, 10_000)
    assert gap_limit == pytest.approx(4 + 3 * 2 ** 0.5 * 100 * (0.52 * 0.48 / 10_000) ** 0.5)
    assert flags["aa_below_pgd20"] is True and flags["any"] is True
    assert flags["messages"][0].startswith("PGD-20 is 12.0 points above AutoAttack on 10,000 images")


def test_a_saturated_model_raises_nothing() -> None:
    saturated = {"clean_acc": 99.0, "pgd20_acc": 99.0, "autoattack_acc": 99.0, "aa_n_examples": 100,
                 "accuracy_on_attack_outputs": {"pgd20": 99.0}, "pgd_steps": {"n_examples": 100,
                                                                            "acc": {"5": 99.0, "50": 99.0}}}
    flags = masking_flags(saturated)
    assert flags["any"] is False and flags["messages"] == [] and flags["saturated"] is True
    assert masking_flags({**saturated, "aa_n_examples": 10_000})["saturated"] is False  # 1 point is not noise there


def test_marts_known_gap_is_explained_not_flagged_as_masking() -> None:
    """The AWP repository's table: MART 65.04 (reported, PGD-20) vs 56.29 AutoAttack, 10,000 images."""
    mart = {"method": "mart", "clean_acc": 84.17, "pgd20_acc": 65.04, "autoattack_acc": 56.29,
            "aa_n_examples": 10_000}
    flags = masking_flags(mart)
    assert flags["aa_below_pgd20"] is True and flags["any"] is False and flags["messages"] == []
    assert "zoo_cards/mart.md" in flags["explained"]["aa_below_pgd20"]
    assert masking_flags({**mart, "method": "at"})["any"] is True  # the same gap elsewhere is a warning


# --------------------------------------------------------------------------- the command


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    from atzoo.models import create_model

    torch.manual_seed(0)
    path = tmp_path / "run"
    path.mkdir()
    model = create_model("small_cnn", 10, 1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    meta = {"model": "small_cnn", "num_classes": 10, "in_channels": 1, "method": "at", "dataset": "digits"}
    (path / "model_meta.json").write_text(json.dumps(meta))
    cfg = build_config(None, ["attack.eps=0.05", "eval.eps=0.05"], method={"name": "at"}, data={"name": "digits"},
                       model={"name": "small_cnn"})
    (path / "config.yaml").write_text(to_yaml(cfg))
    return path


def test_eval_n_ex_puts_every_attack_on_one_set(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from atzoo.cli import run

    aa = ["--aa-version", "custom", "--aa-attacks", "apgd-ce", "--no-progress"]
    assert run(["eval", str(run_dir), "--attacks", "clean,pgd20,aa", "--n-ex", "24", *aa]) == 0
    payload = read_eval_json(run_dir / "eval.json")
    assert payload["eval_set"] == {"split": "test", "selection": "first", "n_examples": 24, "test_size": 360}
    assert payload["n_examples"] == payload["aa_n_examples"] == payload["pgd_steps"]["n_examples"] == 24
    assert payload["worst_case_acc"] <= min(payload["autoattack_acc"], payload["pgd20_acc"]) <= payload["clean_acc"]
    assert set(payload["examples"]["flags"]) == {"clean", "pgd20", "aa"} and payload["examples"]["n"] == 24
    # the same set again with another attack: added, nothing dropped, order kept
    assert run(["eval", str(run_dir), "--attacks", "pgd50", "--n-ex", "24", "--no-progress"]) == 0
    again = read_eval_json(run_dir / "eval.json")
    assert again["worst_case_acc"] <= again["pgd50_acc"] <= again["clean_acc"] and again["pgd20_acc"] is not None
    assert again["autoattack_acc"] == payload["autoattack_acc"] and "previous" not in again
    # another norm: the L2 radius, and the L-inf results kept under 'previous'
    assert run(["eval", str(run_dir), "--attacks", "clean,pgd20", "--norm", "l2", "--n-ex", "24", "--no-progress"]) == 0
    l2 = read_eval_json(run_dir / "eval.json")
    assert (l2["norm"], l2["eps"]) == ("l2", 0.5) and l2["previous"][-1]["autoattack_acc"] == again["autoattack_acc"]
    assert "kept under 'previous'" in capsys.readouterr().out


def test_damaged_example_flags_are_a_one_line_error(tmp_path: Path) -> None:
    from atzoo.errors import AtzooError

    (tmp_path / "eval.json").write_text(json.dumps({"examples": {"n": 9, "flags": {"clean": "zz"}}}))
    with pytest.raises(AtzooError, match=r"'examples.flags.clean' must be 2 bytes of hex for 9 examples"):
        read_eval_json(tmp_path / "eval.json")
