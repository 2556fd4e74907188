"""Leaderboards across folders and machines: dataset identity by content, honest costs, provenance.

The first and last tests train tiny real runs (a few seconds); the rest use synthetic run
directories (``leaderboard_fixtures``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from leaderboard_fixtures import cost_row, make_run

from atzoo.config import build_config
from atzoo.data import create_dataset
from atzoo.data.fingerprint import dataset_identity
from atzoo.engine import train
from atzoo.engine.cost import CostMeter
from atzoo.provenance import config_hash, git_commit
from atzoo.report import build_leaderboard, compare, load_run, load_runs
from atzoo.report.bench_records import lookup_ratio, record_step_cost
from atzoo.report.html import to_html
from atzoo.report.render import to_csv, to_markdown

TINY = ["data.batch_size=16", "optim.epochs=1", "attack.steps=1", "run.trackers=[]", "eval.attacks=clean",
        "eval.batch_size=32", "eval.invariance=false", "run.log_every=100"]


@pytest.fixture(autouse=True)
def _reset_accelerate():
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state()


def _write_npz(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8), y_train=np.arange(48) % 4,
             x_test=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), y_test=np.arange(16) % 4)
    return path


def _train_npz(npz: Path, out: Path, seed: int, *extra: str) -> Path:
    cfg = build_config(None, [*TINY, f"run.seed={seed}", *extra], method={"name": "standard"},
                       model={"name": "small_cnn"}, data={"name": f"npz:{npz}"})
    return train(cfg, out=out)


# --------------------------------------------------------------------------- dataset identity


def test_same_npz_through_two_paths_ranks_in_one_table(tmp_path: Path, cli) -> None:
    npz = _write_npz(tmp_path / "data" / "tiny.npz")
    (tmp_path / "mnt").symlink_to(tmp_path / "data", target_is_directory=True)  # the same file, another path
    a = _train_npz(npz, tmp_path / "runs" / "a", seed=0)
    b = _train_npz(tmp_path / "mnt" / "tiny.npz", tmp_path / "runs" / "b", seed=1)
    ids = [json.loads((r / "eval.json").read_text())["dataset_identity"] for r in (a, b)]
    assert ids[0]["source"] != ids[1]["source"] and ids[0]["fingerprint"] == ids[1]["fingerprint"]
    assert ids[0]["name"] == "npz:tiny.npz" and ids[0]["train"]["n"] == 48 and ids[0]["test"]["n"] == 16

    board = build_leaderboard(load_runs([a, b]))
    assert len(board.groups) == 1 and board.separation_note is None
    group = board.groups[0]
    assert group.title.startswith("npz:tiny.npz · small_cnn")
    [entry] = group.measured  # two seeds of one configuration, although data.name differs
    assert entry.seeds == 2 and entry.label == "standard"
    assert any(f"npz:{npz}" in n and f"npz:{tmp_path / 'mnt' / 'tiny.npz'}" in n for n in group.notes)
    # Seeds of one configuration share the config hash, whatever path the data came from.
    assert len({r.provenance["config_hash"] for r in entry.runs}) == 1

    # A later 'atzoo eval' loads the training split without data.train_subset; the
    # fingerprint must still be of what the run trained on.
    assert cli("eval", str(b), "--attacks", "clean", "--no-progress") == 0
    assert json.loads((b / "eval.json").read_text())["dataset_identity"]["fingerprint"] == ids[1]["fingerprint"]


def test_fingerprint_is_of_the_arrays_used() -> None:
    full = create_dataset("digits")
    same = dataset_identity(create_dataset("digits"))
    assert dataset_identity(full) == same
    subset = dataset_identity(full.subset(train=100))
    assert subset["fingerprint"] != same["fingerprint"] and subset["train"]["n"] == 100
    assert subset["test"] == same["test"]  # the test split is untouched
    # What a run trained on, recorded in its meta, replaces the bundle's training split.
    evaluated = dataset_identity(full, trained_on={"train": subset["train"]})
    assert evaluated["fingerprint"] == subset["fingerprint"]


def test_registered_sets_hash_once_and_reuse_the_cached_digest(tmp_path: Path, monkeypatch) -> None:
    import os

    from atzoo.data import fingerprint

    monkeypatch.setenv("ATZOO_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "data_batch"
    source.write_bytes(b"cifar")
    base = create_dataset("digits")
    calls = []
    real = fingerprint.split_digest
    monkeypatch.setattr(fingerprint, "split_digest", lambda split: calls.append(1) or real(split))

    def fresh():  # a new load of the "files": new tensors, no per-process memo
        return dataclasses.replace(base.subset(train=50, test=20), name="cifar10", source_files=(str(source),))

    first = dataset_identity(fresh())
    assert len(calls) == 2 and (tmp_path / "cache" / "fingerprints.json").is_file()
    assert dataset_identity(fresh()) == first and len(calls) == 2  # read from the cache
    os.utime(source, ns=(1, 1))  # the files changed: hashed again
    assert dataset_identity(fresh()) == first and len(calls) == 4


def test_different_content_under_one_name_stays_apart_and_says_so(tmp_path: Path) -> None:
    ident = lambda fp: {"name": "npz:tiny.npz", "source": "npz:/x/tiny.npz", "fingerprint": fp}  # noqa: E731
    runs = [make_run(tmp_path, "a", "at", dataset="npz:/x/tiny.npz", identity=ident("aaaa")),
            make_run(tmp_path, "b", "at", dataset="npz:/x/tiny.npz", identity=ident("bbbb"))]
    board = build_leaderboard(load_runs(runs))
    assert len(board.groups) == 2
    assert "npz:tiny.npz [data aaaa]" in board.separation_note and "npz:tiny.npz [data bbbb]" in board.separation_note


def test_runs_without_fingerprint_group_by_name_as_before(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "a", "at", dataset="npz:/a/x.npz"), make_run(tmp_path, "b", "at", dataset="npz:/b/x.npz"),
            make_run(tmp_path, "c", "trades", dataset="npz:/a/x.npz")]
    board = build_leaderboard(load_runs(runs))
    assert [g.dataset for g in board.groups] == ["npz:/a/x.npz", "npz:/b/x.npz"]
    assert sorted(e.label for e in board.groups[0].entries) == ["at", "trades"]
    assert "test set (npz:/a/x.npz, npz:/b/x.npz)" in board.separation_note


# --------------------------------------------------------------------------- costs


def _cost_board(tmp_path: Path, at_costs: list, other_costs: list, method: str = "trades"):
    runs = [make_run(tmp_path, "at", "at", costs=at_costs, epoch_seconds=(10.0,)),
            make_run(tmp_path, method, method, costs=other_costs, epoch_seconds=(30.0,) * max(1, len(other_costs)))]
    group = build_leaderboard(load_runs(runs)).groups[0]
    return group, {e.label: e for e in group.measured}


def test_measured_ratio_on_cpu_divides_thread_time_of_one_thread_runs(tmp_path: Path) -> None:
    group, by = _cost_board(tmp_path, [cost_row(cpu_s=8.0, wall_s=8.5)], [cost_row(cpu_s=12.0, wall_s=12.5)])
    assert by["trades"].measured_vs_at == pytest.approx(1.5)
    assert by["trades"].cost_kind == "passes" and by["trades"].cost_vs_at == pytest.approx(27 / 17)  # the default
    assert by["at"].step_seconds.mean == pytest.approx(8.0) and by["at"].step_basis == "thread CPU time"
    assert by["at"].seconds_per_epoch.mean == pytest.approx(10.0)  # the wall clock of the epoch, as before
    assert by["at"].measured_vs_at == pytest.approx(1.0)
    assert by["trades"].measured_source.startswith("thread CPU time")
    assert any("thread CPU time per epoch" in n and "Test CPU 9000" in n for n in group.notes)


def test_several_cpu_threads_give_no_measured_ratio(tmp_path: Path) -> None:
    """Process CPU time with two intra-op threads counts OpenMP spin-waiting, which load inflates."""
    _, by = _cost_board(tmp_path, [cost_row(cpu_s=1.1, wall_s=1.0, threads=2)],
                        [cost_row(cpu_s=17.5, wall_s=2.0, threads=2)])
    assert by["trades"].measured_vs_at is None and by["trades"].cost_vs_at == pytest.approx(27 / 17)
    assert "OpenMP spin-waiting" in by["trades"].measured_note


def test_a_busy_machine_gives_no_measured_ratio(tmp_path: Path) -> None:
    """One thread that had a core only a third of the time: its CPU time is not trusted."""
    _, by = _cost_board(tmp_path, [cost_row(cpu_s=8.0, wall_s=30.0)], [cost_row(cpu_s=12.0, wall_s=12.5)])
    assert by["trades"].measured_vs_at is None and "had a core 27% of their wall time" in by["trades"].measured_note


def test_measured_ratio_on_gpu_divides_wall_time(tmp_path: Path) -> None:
    gpu = {"device": "cuda", "device_name": "NVIDIA H200", "precision": "bf16"}
    _, by = _cost_board(tmp_path, [cost_row(cpu_s=9.0, wall_s=2.0, **gpu)], [cost_row(cpu_s=9.0, wall_s=3.0, **gpu)])
    assert by["trades"].measured_vs_at == pytest.approx(1.5)
    assert by["trades"].measured_source.startswith("wall time per epoch")


def test_two_device_or_precision_settings_give_no_measured_ratio_and_say_why(tmp_path: Path, cli, capsys) -> None:
    _, by = _cost_board(tmp_path / "p", [cost_row(cpu_s=8.0, wall_s=8.0)], [cost_row(cpu_s=1.0, wall_s=1.0,
                        precision="bf16")])
    assert by["trades"].measured_vs_at is None and by["trades"].cost_vs_at == pytest.approx(27 / 17)
    assert "it ran with precision bf16 (AT: no)" in by["trades"].measured_note
    runs = [tmp_path / "d" / "at", tmp_path / "d" / "mart"]
    make_run(tmp_path / "d", "at", "at", costs=[cost_row(cpu_s=8.0, wall_s=8.0)])
    make_run(tmp_path / "d", "mart", "mart", costs=[cost_row(cpu_s=1.0, wall_s=0.5, device="cuda",
                                                             device_name="NVIDIA H200")])
    capsys.readouterr()
    assert cli("compare", *map(str, runs), "--out", str(tmp_path / "lb")) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "No measured cost ratio for mart: it ran with device cuda (AT: cpu), device_name NVIDIA H200 (AT: Test CPU" \
        in printed and "not comparable" in printed
    rows = list(csv.DictReader(io.StringIO((tmp_path / "lb" / "leaderboard.csv").read_text())))
    mart = next(r for r in rows if r["label"] == "mart")
    assert mart["measured_vs_at"] == "" and mart["cost_kind"] == "passes"


def test_bench_records_are_kept_but_the_leaderboard_shows_the_pass_count(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATZOO_CACHE", str(tmp_path / "cache"))
    payload = {"settings": {"precision": "bf16", "model": "resnet18", "batch_size": 128, "overrides": [],
                            "variants": []},
               "environment": {"device": "cuda:0", "device_name": "NVIDIA H200", "timestamp": "t", "host": "g"},
               "methods": [{"method": "at", "ratio_to_at": 1.0, "finite": True},
                           {"method": "trades", "ratio_to_at": 1.37, "finite": True}]}
    path = record_step_cost(payload)
    assert path is not None and path.parent == tmp_path / "cache" / "step_cost"
    gpu = {"device": "cuda", "device_name": "NVIDIA H200", "precision": "bf16"}
    assert lookup_ratio(gpu, "trades")[0] == pytest.approx(1.37)
    assert record_step_cost({**payload, "settings": {**payload["settings"], "overrides": ["attack.steps=3"]}}) is None

    group, by = _cost_board(tmp_path, [cost_row(cpu_s=8.0, wall_s=8.0)], [cost_row(cpu_s=1.0, wall_s=1.0, **gpu)])
    trades = by["trades"]
    assert trades.cost_vs_at == pytest.approx(27 / 17) and trades.cost_kind == "passes"
    assert "| 1.59x |" in to_markdown(build_leaderboard(trades.runs + by["at"].runs))


def test_an_epoch_resumed_on_other_hardware_does_not_count(tmp_path: Path) -> None:
    resumed = {**cost_row(cpu_s=100.0, wall_s=100.0), "mixed": True}
    _, by = _cost_board(tmp_path, [cost_row(cpu_s=8.0, wall_s=8.0)], [cost_row(cpu_s=12.0, wall_s=12.0), resumed])
    assert by["trades"].measured_vs_at == pytest.approx(1.5)


def test_legacy_runs_mixed_with_new_runs_give_no_measured_ratio(tmp_path: Path) -> None:
    _, by = _cost_board(tmp_path, [], [cost_row(cpu_s=1.0, wall_s=1.0)])
    assert by["trades"].measured_vs_at is None and "recorded no CPU time" in by["trades"].measured_note
    legacy = {k: v for k, v in cost_row(cpu_s=1.0, wall_s=1.0).items() if k != "thread_s"}
    _, by = _cost_board(tmp_path / "l", [legacy], [legacy])
    assert by["trades"].measured_vs_at is None and "no thread CPU time" in by["trades"].measured_note


def test_meter_marks_an_epoch_resumed_on_other_hardware() -> None:
    profile = {"device": "cpu", "device_name": "A", "processes": 1, "threads": 1, "precision": "no", "host": "h"}
    meter = CostMeter(dict(profile))
    with meter.step():
        sum(range(1000))
    state = meter.state_dict()
    resumed = CostMeter(dict(profile))
    resumed.load_state_dict(state)
    assert resumed.steps == 1 and not resumed.mixed
    elsewhere = CostMeter({**profile, "threads": 4})
    elsewhere.load_state_dict(state)
    assert elsewhere.mixed and elsewhere.row()["mixed"]


# --------------------------------------------------------------------------- provenance


def test_provenance_in_eval_json_and_every_leaderboard_format(tmp_path: Path) -> None:
    run = _train_npz(_write_npz(tmp_path / "tiny.npz"), tmp_path / "run", seed=7)
    recorded = json.loads((run / "eval.json").read_text())["provenance"]
    assert recorded["seed"] == 7 and recorded["git_commit"] == git_commit()
    assert recorded["atzoo_version"] and len(recorded["config_hash"]) == 16
    assert recorded["machine"]["host"] and recorded["machine"]["cpu"] and recorded["evaluated"]["machine"]
    meta = json.loads((run / "model_meta.json").read_text())
    assert meta["provenance"]["config_hash"] == recorded["config_hash"]

    other = make_run(tmp_path, "other", "standard", dataset=json.loads((run / "eval.json").read_text())["dataset"],
                     identity=json.loads((run / "eval.json").read_text())["dataset_identity"], model="small_cnn",
                     eps=json.loads((run / "eval.json").read_text())["eps"],
                     provenance={"atzoo_version": "0.0.9", "git_commit": "abc123", "seed": 3, "config_hash": "f" * 16,
                                 "machine": {"host": "far-away", "cpu": "Other CPU", "gpu": "NVIDIA H200"}})
    board, written = compare([run, other], out=tmp_path / "lb")
    assert len(board.groups) == 1
    assert board.machines_note is not None and "2 machines" in board.machines_note and "far-away" in board.machines_note
    data = json.loads(written["leaderboard.json"].read_text())
    rows = {Path(p["run"]).name: p for g in data["groups"] for r in g["rows"] for p in r["provenance"]}
    assert rows["run"]["seed"] == 7 and rows["run"]["git_commit"] == git_commit()
    identity = json.loads((run / "eval.json").read_text())["dataset_identity"]
    assert rows["other"] == {"run": str(other), "atzoo_version": "0.0.9", "git_commit": "abc123", "seed": 3,
                             "config_hash": "f" * 16, "weights": None, "train_data": identity["train"]["digest"],
                             "host": "far-away", "machine": "Other CPU + NVIDIA H200"}
    assert rows["run"]["weights"] == json.loads((run / "eval.json").read_text())["weights_fingerprint"]
    assert data["hosts"] == sorted([recorded["machine"]["host"], "far-away"])
    csv_rows = list(csv.DictReader(io.StringIO(written["leaderboard.csv"].read_text())))
    assert {"atzoo_version", "git_commit", "seed_values", "config_hash", "host", "machine"} <= set(csv_rows[0])
    assert {h for r in csv_rows for h in r["host"].split(";")} == {recorded["machine"]["host"], "far-away"}
    assert {r["git_commit"] for r in csv_rows} == {git_commit(), "abc123"}
    page = written["leaderboard.html"].read_text()
    assert "commit abc123" in page and "host far-away" in page and "Assembled from runs made on 2 machines" in page
    assert "Assembled from runs made on 2 machines" in written["leaderboard.md"].read_text()


def test_git_commit_only_for_a_checkout_that_tracks_atzoo(tmp_path: Path) -> None:
    assert git_commit.__wrapped__(str(tmp_path)) is None  # not a repository at all
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "README").write_text("x")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    (tmp_path / "atzoo").mkdir()
    (tmp_path / "atzoo" / "__init__.py").write_text("")  # an installed copy, untracked
    assert git_commit.__wrapped__(str(tmp_path)) is None
    subprocess.run([*git, "add", "atzoo"], check=True)
    subprocess.run([*git, "commit", "-qm", "y"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_commit.__wrapped__(str(tmp_path)) == head
    (tmp_path / "atzoo" / "__init__.py").write_text("changed = True\n")
    assert git_commit.__wrapped__(str(tmp_path)) == head + "+dirty"


def test_older_runs_get_seed_and_config_hash_from_config_yaml(tmp_path: Path) -> None:
    record = load_run(make_run(tmp_path, "old", "at", seed=4))
    assert record.provenance["seed"] == 4 and record.provenance["atzoo_version"] == "0.1.0"
    assert record.provenance["config_hash"] == config_hash(record.config)
    assert record.provenance["git_commit"] is None and record.provenance["host"] is None
    text = to_html(build_leaderboard([record]))
    assert "commit ?" in text and "seeds 4" in text
    assert "?" in to_csv(build_leaderboard([record])).splitlines()[1]
