"""Catastrophic-overfitting (CO) detection (atzoo/engine/overfit.py): the flag on recorded
histories shaped like the published collapses, and the engine's reporting and actions
(epoch line, metrics.jsonl, eval.json, curves, eval.on_co=stop/rollback) on a run whose
probe replays a recorded collapse. Real CO at CPU scale is looked for in
benchmarks/fast_at_cpu.py and in thirteen fgsm_rs runs up to 3 eps (docs/results.md, "Looking
for catastrophic overfitting at CPU scale"): none collapsed, so no real run here can produce one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from atzoo.config import build_config
from atzoo.engine.overfit import FGSM_TOLERANCE_POINTS, PGD_DROP_POINTS, Check, Detector, OverfitWatch, co_flag

# FGSM-RS with alpha = 16/255 at eps 8/255 in the shape of Wong et al. 2020, Fig. 3 (percent):
# PGD climbs to ~40 then collapses within an epoch while FGSM accuracy jumps up.
COLLAPSE = [(30.0, 25.0), (38.0, 33.0), (45.0, 40.0), (80.0, 2.0), (88.0, 0.5)]
# A run that simply gets worse (lr too high): both accuracies fall -- not CO.
BOTH_FALL = [(30.0, 25.0), (45.0, 40.0), (20.0, 15.0)]


def flags(history: list[tuple[float, float]]) -> list[int]:
    detector = Detector()
    return [c.epoch for c in (Check(e, f, p) for e, (f, p) in enumerate(history)) if detector.observe(c)["flagged"]]


def test_flag_fires_on_the_collapse_only() -> None:
    assert flags(COLLAPSE) == [3, 4]
    assert flags(BOTH_FALL) == []
    assert flags([(40.0, 40.0), (41.0, 40.0 - PGD_DROP_POINTS + 0.5)]) == []  # a drop under the threshold
    # FGSM may dip by up to the tolerance and it still counts as "holds".
    assert co_flag([Check(0, 50.0, 40.0)], Check(1, 50.0 - FGSM_TOLERANCE_POINTS, 40.0 - PGD_DROP_POINTS))
    assert not co_flag([Check(0, 50.0, 40.0)], Check(1, 50.0 - FGSM_TOLERANCE_POINTS - 0.1, 10.0))
    # The reference is the most robust earlier check: a collapse over two epochs is caught.
    assert flags([(50.0, 40.0), (55.0, 28.0), (60.0, 16.0)]) == [2]


def test_detector_row_and_state_round_trip() -> None:
    detector = Detector()
    for epoch, (f, p) in enumerate(COLLAPSE[:4]):
        row = detector.observe(Check(epoch, f, p))
    assert row == {"fgsm_acc": 80.0, "pgd_acc": 2.0, "flagged": True, "ref_epoch": 2, "pgd_drop": 38.0,
                   "fgsm_change": 35.0}
    copy = Detector()
    copy.load_state_dict(json.loads(json.dumps(detector.state_dict())))
    assert copy == detector and copy.summary("validation", "pgd10")["first_epoch"] == 3


TINY = ["data.train_subset=32", "data.test_subset=16", "data.batch_size=16", "optim.epochs=4", "run.trackers=[]",
        "eval.attacks=clean", "eval.invariance=false", "eval.batch_size=16", "run.deterministic=true",
        "optim.schedule=constant", "optim.lr=0.05", "run.keep_checkpoints=10"]


@pytest.fixture(autouse=True)
def _isolated_global_state():
    from accelerate.state import AcceleratorState

    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)
    AcceleratorState._reset_state()


def replay_probe(monkeypatch: pytest.MonkeyPatch, history: list[tuple[float, float]]) -> None:
    """The training probe returns the recorded (FGSM, PGD) accuracies of the epoch."""
    monkeypatch.setattr(OverfitWatch, "probe", lambda self, net, epoch: history[epoch])


def fgsm_rs_run(tmp_path: Path, name: str, *extra: str) -> Path:
    from atzoo.engine import train

    cfg = build_config(None, [*TINY, *extra], method={"name": "fgsm_rs"}, model={"name": "small_cnn"},
                       data={"name": "digits"})
    return train(cfg, out=tmp_path / name)


def test_epoch_line_shows_the_probe_and_the_flag() -> None:
    from atzoo.engine.overfit import co_text
    from atzoo.engine.validation import epoch_line

    detector = Detector()
    rows = [{"attack": "pgd10", **detector.observe(Check(e, f, p))} for e, (f, p) in enumerate(COLLAPSE)]
    summary = {"loss": 0.5, "train_acc": 0.9, "seconds": 1.0}
    assert epoch_line(0, 5, summary, 0.1, None, None, co=co_text(rows[0], with_accuracies=True)) == (
        "epoch 1/5  loss 0.5000  train acc 90.00%  co-probe fgsm 30.00% pgd10 25.00%  lr 0.1  1.0 s")
    assert co_text(rows[3], with_accuracies=False) == (
        "CATASTROPHIC OVERFITTING: pgd10 -38.0 pts since epoch 3, fgsm +35.0 pts")


def test_single_step_runs_are_checked_by_default_with_real_measurements(tmp_path: Path) -> None:
    """No eval.val_every: the probe of training images is measured every epoch (real attacks)."""
    from atzoo.engine import read_metrics

    run = fgsm_rs_run(tmp_path, "real", "optim.epochs=2")
    rows = [r for r in read_metrics(run) if r["kind"] == "co"]
    assert [r["epoch"] for r in rows] == [0, 1] and rows[0]["on"] == "train_probe_256"
    assert all(0.0 <= r["pgd_acc"] <= r["fgsm_acc"] + 10 and r["fgsm_acc"] <= 100 for r in rows)
    report = json.loads((run / "eval.json").read_text())["catastrophic_overfitting"]
    assert report["detected"] is False and len(report["history"]) == 2


def test_a_collapse_is_logged_marked_and_stops_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from atzoo.engine import read_metrics
    from atzoo.engine.curves import run_curves

    replay_probe(monkeypatch, COLLAPSE)
    warned = fgsm_rs_run(tmp_path, "warn")
    flagged = [r for r in read_metrics(warned) if r["kind"] == "co" and r["flagged"]]
    assert [(r["epoch"], r["ref_epoch"], r["pgd_drop"]) for r in flagged] == [(3, 2, 38.0)]
    assert len([r for r in read_metrics(warned) if r["kind"] == "epoch"]) == 4  # warn: trains on
    report = json.loads((warned / "eval.json").read_text())["catastrophic_overfitting"]
    assert report["detected"] and report["first_epoch"] == 3 and report["epochs"] == [3]
    assert run_curves(warned)["co_flagged"] == [(4, 1.0)]  # the red line of curves.png (1-based epoch)

    replay_probe(monkeypatch, [(30.0, 25.0), (80.0, 2.0), (85.0, 1.0), (85.0, 1.0)])
    stopped = fgsm_rs_run(tmp_path, "stop2", "eval.on_co=stop")
    assert len([r for r in read_metrics(stopped) if r["kind"] == "epoch"]) == 2
    assert json.loads((stopped / "eval.json").read_text())["catastrophic_overfitting"]["stopped"]


def test_rollback_exports_the_weights_of_the_most_robust_check(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from atzoo.engine.checkpoint import list_checkpoints, load_checkpoint

    replay_probe(monkeypatch, [(30.0, 25.0), (40.0, 35.0), (80.0, 2.0), (85.0, 1.0)])
    run = fgsm_rs_run(tmp_path, "rollback", "eval.on_co=rollback", "run.evaluate=false")
    exported = load_file(str(run / "model.safetensors"))
    # The checkpoint after epoch 2 (the most robust check) holds the weights exported.
    second = load_checkpoint(list_checkpoints(run / "checkpoints")[1]).tensors["training"]
    for key, value in exported.items():
        assert torch.equal(value, second[f"model.{key}"]), key
