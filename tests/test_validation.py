"""Per-epoch validation on a held-out training split, best weights, the epoch line and curves."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from atzoo.cli import run
from atzoo.config import build_config
from atzoo.data import create_dataset
from atzoo.engine import read_metrics, train
from atzoo.engine.validation import VAL_SEED, carve_validation, epoch_line, split_indices, val_size
from atzoo.errors import ConfigError

SMALL = ["data.train_subset=80", "data.test_subset=16", "data.batch_size=16", "optim.epochs=2", "attack.steps=1",
         "run.trackers=[]", "eval.attacks=clean,pgd20", "eval.invariance=false", "eval.batch_size=16",
         "eval.val_every=1", "data.val_size=16", "run.deterministic=true"]


@pytest.fixture(autouse=True)
def _isolated_global_state():
    from accelerate.state import AcceleratorState

    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)
    AcceleratorState._reset_state()


def small_config(*overrides: str):
    return build_config(None, [*SMALL, *overrides], method={"name": "at"}, model={"name": "small_cnn"},
                        data={"name": "digits"})


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- the held-out split


def test_held_out_split_is_fixed_disjoint_and_never_the_test_set() -> None:
    bundle = create_dataset("digits")
    train_part, val = carve_validation(bundle, 100)
    held, kept = split_indices(len(bundle.train), 100)
    assert VAL_SEED == 0 and set(held.tolist()).isdisjoint(kept.tolist())
    assert len(held) + len(kept) == len(bundle.train) and len(train_part.train) == len(bundle.train) - 100
    assert torch.equal(val.test.x, bundle.train.x[held]) and torch.equal(train_part.train.y, bundle.train.y[kept])
    assert torch.equal(train_part.test.x, bundle.test.x)  # the test set is untouched
    assert torch.equal(split_indices(len(bundle.train), 100)[0], held)  # the same images every time
    assert torch.equal(val.train.x, train_part.train.x[:100])  # the train probe: fixed, unaugmented


def test_val_size_defaults_and_errors() -> None:
    assert val_size(small_config("eval.val_every=0"), 1000) == 0
    assert val_size(small_config("data.val_size=null"), 50_000) == 1000  # Rice et al.'s 1,000
    assert val_size(small_config("data.val_size=null"), 1437) == 143
    with pytest.raises(ConfigError, match=r"data.val_size must be in \[1, 79\]"):
        val_size(small_config("data.val_size=80"), 80)


@pytest.mark.parametrize("overrides, message", [
    (("eval.val_every=0", "eval.weights=best"), "eval.weights=best needs a validation"),
    (("eval.weights=best", "averaging.swa=true"), "averaging exports the average"),
    (("eval.val_every=-1",), "eval.val_every must be >= 0"),
])
def test_validation_config_errors(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        small_config(*overrides)


def test_epoch_line_is_one_plain_line() -> None:
    summary = {"loss": 1.23456, "train_acc": 0.412, "seconds": 12.34}
    val = {"val_clean_acc": 80.1, "val_robust_acc": 40.2, "attack": "pgd10", "best": True}
    assert epoch_line(2, 10, summary, 0.1, val, 86.0) == (
        "epoch 3/10  loss 1.2346  train acc 41.20%  val clean 80.10% pgd10 40.20% (best)  lr 0.1  12.3 s  ETA 0:01:26")
    assert epoch_line(0, 1, summary, 0.02, None, None) == "epoch 1/1  loss 1.2346  train acc 41.20%  lr 0.02  12.3 s"


# --------------------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def best_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from accelerate.state import AcceleratorState

    import contextlib

    out = tmp_path_factory.mktemp("val") / "best"
    # stdout and stderr go to a file, as under nohup or SLURM: no terminal, no progress bar
    with open(out.parent / "log.txt", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        assert run(["train", "at", "--model", "small_cnn", "--dataset", "digits", *SMALL, "eval.weights=best",
                    "run.trackers=[tensorboard]", "--out", str(out)]) == 0
    AcceleratorState._reset_state()
    torch.use_deterministic_algorithms(False)
    return out


def test_run_validates_each_epoch_and_keeps_best_and_last(best_run: Path) -> None:
    rows = read_metrics(best_run)
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["epoch"] for r in val] == [0, 1] and all(r["attack"] == "pgd10" and r["n_val"] == 16 for r in val)
    best_epoch = max(range(2), key=lambda e: (val[e]["val_robust_acc"], -e))
    assert val[-1]["best_epoch"] == best_epoch
    evaluation = json.loads((best_run / "eval.json").read_text())
    assert evaluation["weights"] == "best" and evaluation["validation"]["best_epoch"] == best_epoch
    assert evaluation["validation"]["best_robust_acc"] == pytest.approx(val[best_epoch]["val_robust_acc"])
    assert json.loads((best_run / "model_meta.json").read_text())["weights"] == "best"
    assert digest(best_run / "model.safetensors") == digest(best_run / "model_best.safetensors")
    assert (best_run / "model_last.safetensors").is_file()
    events = list((best_run / "tensorboard").rglob("events.out.tfevents*"))
    assert any(b"val/val_robust_acc" in p.read_bytes() for p in events), "validation not sent to TensorBoard"
    assert (best_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_epoch_lines_appear_without_a_terminal(best_run: Path) -> None:
    text = (best_run.parent / "log.txt").read_text()
    lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  loss ") and "val clean" in lines[0]
    assert " lr " in lines[1] and " s  ETA 0:00:00" in lines[1] and "pgd10" in lines[1]
    assert "no shipped recipe for at on digits with small_cnn; using at's paper defaults" in text
    assert f"run directory: {best_run}" in text


def test_resume_with_validation_and_best_weights_is_exact(best_run: Path, tmp_path: Path) -> None:
    crashed = tmp_path / "crashed"
    train(small_config("eval.weights=best", "run.max_steps=5", "run.evaluate=false"), out=crashed)
    assert [r["epoch"] for r in read_metrics(crashed) if r["kind"] == "val"] == [0]
    train(small_config("eval.weights=best"), out=crashed, resume=True)
    for name in ("model.safetensors", "model_best.safetensors", "model_last.safetensors"):
        assert digest(crashed / name) == digest(best_run / name), name
    from atzoo.engine.curves import run_curves  # curves.png is titled with each run's own name

    assert run_curves(crashed) == run_curves(best_run)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s", "cost")}  # noqa: E731
                          for r in rows if r["kind"] in ("val", "epoch") and not r.get("partial")]
    assert strip(read_metrics(crashed)) == strip(read_metrics(best_run))
    evaluation = json.loads((crashed / "eval.json").read_text())
    assert evaluation["weights"] == "best"
    shutil.rmtree(crashed)


# --------------------------------------------------------------------------- curves


def test_run_curves_and_compare_curves(best_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from atzoo.engine.curves import run_curves

    curves = run_curves(best_run)
    val = [r for r in read_metrics(best_run) if r["kind"] == "val"]
    assert curves["val_robust_acc"] == [(1, val[0]["val_robust_acc"]), (2, val[1]["val_robust_acc"])]
    assert [e for e, _ in curves["loss"]] == [1, 2] and [e for e, _ in curves["lr"]] == [1, 2]
    other = tmp_path / "other"
    shutil.copytree(best_run, other)
    assert run(["compare", str(best_run), str(other), "--curves", "--out", str(tmp_path / "board")]) == 0
    assert (tmp_path / "board" / "curves.png").read_bytes()[:4] == b"\x89PNG"
