"""What a new user hit first: compare on a folder, labels, resume, run names, help, docs,
the trade-off plot and the HTML page. Each test failed before its fix."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml

from atzoo.cli import run
from atzoo.engine.plan import plan_run
from atzoo.config import from_yaml
from atzoo.report import compare
from leaderboard_fixtures import make_run

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "small_cnn", "--dataset", "digits", "--epochs", "1", "data.train_subset=128", "attack.steps=1",
        "run.trackers=[]", "run.evaluate=false"]


# --------------------------------------------------------------------------- compare


def _unevaluated(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("run:\n  seed: 0\n")
    (folder / "metrics.jsonl").write_text("")
    return folder


def test_compare_searches_folders_and_skips_unevaluated_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "at-s0", "at")
    make_run(runs / "sweep", "trades-s0", "trades")  # one level deeper
    waiting = _unevaluated(runs, "arat-s0")
    assert run(["compare", str(runs), "--out", str(tmp_path / "lb")]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped 1 run(s) without eval.json")
    assert str(waiting) in warnings[0]
    board = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert sorted(r["label"] for g in board["groups"] for r in g["rows"]) == ["at", "trades"]


def test_compare_of_a_folder_without_runs_does_not_suggest_eval_on_it(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes").mkdir()
    assert run(["compare", str(tmp_path / "notes"), "--out", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no run directory" in err[0] and f"atzoo eval {tmp_path / 'notes'}" not in err[0]
    _unevaluated(tmp_path / "runs", "at-s0")
    assert run(["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "lb")]) == 2
    assert "none of the 1 run(s) has an eval.json yet" in capsys.readouterr().err
    assert not (tmp_path / "lb").exists()


def _ablation_pair(root: Path) -> list[Path]:
    return [make_run(root, "arat-main", "arat", overrides=["method.split_bn=true"], clean=85.0),
            make_run(root, "arat-ablation", "arat", overrides=["method.split_bn=false"], clean=84.0)]


def test_terminal_table_shows_ablation_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The labels hold square brackets, which rich would read as markup and drop."""
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that no label wraps
    runs = _ablation_pair(tmp_path / "runs")
    assert run(["compare", *map(str, runs), "--out", str(tmp_path / "lb")]) == 0
    printed = capsys.readouterr().out
    assert "arat [method.split_bn=True]" in printed and "arat [method.split_bn=False]" in printed


# --------------------------------------------------------------------------- resume and run names


def test_resume_reads_config_extends_epochs_and_names_refused_values(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "run")
    assert run(["train", "at", *TINY, "--out", out]) == 0
    assert run(["train", "at", "--resume", "--out", out, "--epochs", "2"]) == 0  # no other flag needed
    assert "extending the run from 1 to 2 epochs" in capsys.readouterr().err
    saved = from_yaml((tmp_path / "run" / "config.yaml").read_text())
    assert (saved.optim.epochs, saved.model.name, saved.attack.steps, saved.data.train_subset) == (2, "small_cnn", 1, 128)
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [0, 1]

    before = (tmp_path / "run" / "config.yaml").read_text()
    assert run(["train", "at", "--resume", "--out", out, "optim.lr=0.05", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.epochs: 2 -> 1" in err[0] and "optim.lr: 0.1 -> 0.05" in err[0]
    assert (tmp_path / "run" / "config.yaml").read_text() == before


def test_a_longer_cosine_schedule_cannot_be_resumed() -> None:
    from atzoo.config import build_config
    from atzoo.engine.resume import resume_refusals

    def cfg(epochs: int, schedule: str):
        # --resume applies --epochs to the run's saved config.yaml, whose milestones are
        # explicit values (so not rescaled); give them explicitly here as well.
        return build_config(None, [f"optim.epochs={epochs}", f"optim.schedule={schedule}", "optim.milestones=[5,8]"],
                            method={"name": "at"})

    assert resume_refusals(cfg(10, "piecewise"), cfg(20, "piecewise")) == []
    assert resume_refusals(cfg(10, "cosine"), cfg(20, "cosine")) == ["optim.epochs: 10 -> 20"]


def test_default_run_name_differs_when_the_settings_do() -> None:
    recipe = "arat_cifar10_resnet18"
    main = plan_run("arat", recipe=recipe).run_dir
    ablation = plan_run("arat", recipe=recipe, overrides=["method.split_bn=false"]).run_dir
    assert main == Path("runs/arat-resnet18-cifar10-s0")
    assert ablation.parent == main.parent and ablation.name.startswith(main.name + "-") and ablation != main
    assert plan_run("arat", recipe=recipe, overrides=["method.split_bn=true"]).run_dir == main  # the recipe's own value
    assert plan_run("arat", recipe=recipe, overrides=["run.evaluate=false"]).run_dir == main  # not a training setting
    assert plan_run("arat", recipe=recipe, overrides=["method.split_bn=false", "run.name=mine"]).run_dir == Path("runs/mine")
    readme = (REPO / "README.md").read_text()  # the README's ablation example names the folder it gets
    assert f"-> {main.as_posix()}" in readme and f"-> {ablation.as_posix()}" in readme


# --------------------------------------------------------------------------- help and docs


def test_help_flags_and_bare_atzoo(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["-h"]) == 0 and "Usage: atzoo" in capsys.readouterr().out
    assert run(["train", "-h"]) == 0 and "--resume" in capsys.readouterr().out
    assert run([]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.count("Usage: atzoo") == 1 and "train" in captured.out


def test_docs_prints_code_blocks_unwrapped(capsys: pytest.CaptureFixture[str]) -> None:
    card = (REPO / "zoo_cards" / "arat.md").read_text()
    code_lines = [line for block in re.findall(r"```[^\n]*\n(.*?)```", card, re.S) for line in block.splitlines()
                  if len(line) > 80]
    assert code_lines, "the test needs a code line wider than the terminal"
    assert run(["docs", "arat"]) == 0
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    for line in code_lines:
        assert any(p.strip() == line.strip() for p in printed), line


# --------------------------------------------------------------------------- plot and HTML


def _long_board(root: Path):
    runs = []
    for i, (split_bn, stop_grad, predictor) in enumerate([(True, True, True), (False, True, False),
                                                          (True, False, False), (False, False, True)]):
        runs.append(make_run(root, f"arat-{i}", "arat", clean=84.0 + i, autoattack=50.0 - i,
                             dataset="npz:/data/a/rather/long/path/cifar10_pretty_long_subset_name.npz",
                             overrides=[f"method.split_bn={split_bn}", f"method.stop_grad={stop_grad}",
                                        f"method.predictor={predictor}"]))
    runs.append(make_run(root, "at-c10", "at", clean=83.0, autoattack=42.0))
    return compare(runs, out=None, paper=True)[0]


def test_tradeoff_panels_keep_titles_and_labels_to_themselves(tmp_path: Path) -> None:
    from atzoo.report.plot import tradeoff_figure

    board = _long_board(tmp_path / "runs")
    assert len(board.groups) == 2 and any(len(e.label) > 50 for e in board.groups[0].entries)
    fig = tradeoff_figure(board)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.axison]
    assert len(boxes) == 2
    for box in boxes:  # titles, labels and legends stay on the page
        assert box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1 and box.y0 >= page.y0 - 1 and box.y1 <= page.y1 + 1
    assert not boxes[0].overlaps(boxes[1])  # ... and out of the neighbouring panel


def test_html_embeds_plots_and_links_each_run_config(tmp_path: Path) -> None:
    runs = _ablation_pair(tmp_path / "runs")
    with_steps = runs[0] / "metrics.jsonl"
    with_steps.write_text("".join(json.dumps({"kind": "step", "step": s, "loss": 2.0 / s}) + "\n" for s in (1, 2, 3)))
    compare(runs, out=tmp_path / "lb")
    page = (tmp_path / "lb" / "leaderboard.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2  # the trade-off plot and the training curves
    assert base64.b64decode(images[0]) == (tmp_path / "lb" / "tradeoff.png").read_bytes()
    all_links = re.findall(r'<a href="([^"]+)"', page)
    links = [link for link in all_links if not link.startswith("#")]  # '#settings-...': the page's own sections
    assert sorted(links) == ["../runs/arat-ablation/config.yaml", "../runs/arat-main/config.yaml"]
    assert all(link.startswith("#settings-arat") for link in all_links if link.startswith("#"))
    for link in links:
        assert yaml.safe_load((tmp_path / "lb" / link).read_text())["method"]["name"] == "arat"
