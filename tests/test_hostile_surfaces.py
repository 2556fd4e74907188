"""The bad-input matrix for the newer surfaces: ``reproduce``, ``export``, outside models,
run-directory links and locks, and the Python API.

Like :mod:`test_bad_input` (whose workspace this file extends), every CLI case runs the
real CLI in-process in a copy of a scratch workspace and must end in one
``atzoo: error:`` line, exit code 2, with every file and folder of the workspace exactly
as before (nothing overwritten, nothing written through a link, nothing created).
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from atzoo.cli import run
from test_bad_input import RUN, TRAIN, check_error_line, isolated, snapshot, template  # noqa: F401

#: An npz training set (x_train/y_train/x_test/y_test) of 64 8x8 grey images.
NPZ_TRAIN = ["--model", "small_cnn", "--dataset", "npz:split.npz", "data.batch_size=16", "attack.steps=1",
             "run.max_steps=1", "run.evaluate=false", "run.trackers=[]", "run.checkpoint_every=1"]
#: Table 19 (cost) reads each run's metrics.jsonl in --collect.
COST_ROWS = ["--rows", "cifar10-resnet18/at", "--seeds", "0"]
#: A row whose A100 time the paper did not give: its estimate uses the step-cost ratio.
MART = ["--rows", "cifar10-resnet18/mart", "--seeds", "0"]

FACTORIES = '''
import torch


def needs_args(width):
    return torch.nn.Linear(width, 10)


def linear():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
'''


def _evil_table() -> str:
    return (
        "name: evil\ntitle: a row id that climbs out of --out\nmetrics: [clean]\nseeds: [0]\n"
        "tolerance: {clean: 1.0}\nrows:\n"
        "  - {id: ../escaped, method: at, label: AT, recipe: at_cifar10_resnet18.yaml, paper: {clean: 80.0}}\n"
    )


def _npz(path: Path, seed: int, *, test: bool = True) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    y = np.arange(64) % 10
    if test:
        np.savez(path, x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])
    else:
        np.savez(path, image=x, label=y)


def _fake_cost_run(root: Path, last_line: str) -> None:
    """A finished Table 19 AT run (no training) whose metrics.jsonl ends in ``last_line``."""
    import yaml

    from atzoo.config import config_to_dict
    from atzoo.reproduce import prepare

    (planned,) = prepare("ar-at-table19-cost", rows=["cifar10-resnet18/at"], seeds=[0], out=root).planned
    planned.run_dir.mkdir(parents=True)
    (planned.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(planned.config)))
    good = json.dumps({"kind": "epoch", "epoch": 0, "step": 390, "seconds": 100.0})
    (planned.run_dir / "metrics.jsonl").write_text(good + "\n" + last_line + "\n")
    payload = {"method": "at", "model": planned.config.model.name, "dataset": planned.config.data.name,
               "norm": "linf", "eps": 8 / 255, "clean_acc": 80.0, "n_examples": 10000}
    (planned.run_dir / "eval.json").write_text(json.dumps(payload))


def workspace(template: Path, where: Path) -> Path:  # noqa: F811
    """A copy of ``template`` with its symbolic links kept as links."""
    shutil.copytree(template, where, symlinks=True, copy_function=shutil.copy2)
    return where


@pytest.fixture(scope="module")
def hostile(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The bad-input workspace plus the files of this matrix."""
    from accelerate.state import AcceleratorState

    from atzoo.engine.plan import make_config
    from atzoo.engine import train

    root = tmp_path_factory.mktemp("hostile") / "ws"
    shutil.copytree(template, root, copy_function=shutil.copy2)
    finished = root / RUN
    (root / "evil_table.yaml").write_text(_evil_table())
    (root / "hostile_factories.py").write_text(FACTORIES)
    # step-cost records whose times are negative or not numbers
    for name, ratio in (("negative_cost.json", -50.0), ("nan_cost.json", float("nan"))):
        methods = [{"method": m, "ratio_to_at": ratio} for m in ("at", "trades", "mart", "lbgat", "arat", "arrest")]
        (root / name).write_text(json.dumps({"methods": methods}))
    # runs whose files are damaged or hostile
    for name in ("evil_dataset", "eval_not_json", "eval_string_eps", "eval_huge", "nan_weights", "nan_std",
                 "linked_lock", "linked_metrics", "pid_overflow"):
        shutil.copytree(finished, root / name, symlinks=True)
    meta = json.loads((finished / "model_meta.json").read_text())
    (root / "evil_dataset" / "model_meta.json").write_text(json.dumps({**meta, "dataset": "../../escaped"}))
    (root / "eval_not_json" / "eval.json").write_text("{not json")
    eval_payload = {"method": "at", "model": "small_cnn", "dataset": "digits", "norm": "linf", "eps": "8/255",
                    "clean_acc": 50.0}
    (root / "eval_string_eps" / "eval.json").write_text(json.dumps(eval_payload))
    with open(root / "eval_huge" / "eval.json", "wb") as handle:  # sparse: no disk used
        handle.truncate(64 << 20)
    from safetensors.torch import load_file, save_file

    state = load_file(str(finished / "model.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
              str(root / "nan_weights" / "model.safetensors"))
    # a run trained with normalisation whose std is NaN (in its meta and in its buffer)
    (root / "nan_std" / "model_meta.json").write_text(json.dumps(
        {**meta, "normalize": True, "mean": [0.5], "std": [float("nan")]}))
    save_file({**state, "normalize.mean": torch.full((1, 1, 1, 1), 0.5),
               "normalize.std": torch.full((1, 1, 1, 1), float("nan"))}, str(root / "nan_std" / "model.safetensors"))
    for name, file in (("linked_lock", ".atzoo.lock"), ("linked_metrics", "metrics.jsonl")):
        (root / name / file).unlink(missing_ok=True)
        (root / name / file).symlink_to(Path("..") / "notes" / "thesis.tex")
        (root / name / "eval.json").unlink(missing_ok=True)  # a run to resume
    (root / "pid_overflow" / ".atzoo.lock").write_text(json.dumps({"pid": 10**30, "host": socket.gethostname()}))
    # a run on an npz whose training split changes before --resume
    _npz(root / "split.npz", 0)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        cfg = make_config("at", model="small_cnn", dataset=f"npz:{root / 'split.npz'}", overrides=NPZ_TRAIN[4:])
        train(cfg, out=root / "npz_run")
    finally:
        torch.use_deterministic_algorithms(deterministic)
        AcceleratorState._reset_state()
    (root / "npz_run" / "eval.json").unlink(missing_ok=True)
    _npz(root / "split.npz", 1)  # other images, same shapes
    _npz(root / "train_only.npz", 2, test=False)
    # reproductions whose metrics.jsonl has a bad last line or a row that is not an object
    _fake_cost_run(root / "repro_bad_last", "{\"kind\": \"epoch\", \"epo")
    _fake_cost_run(root / "repro_not_object", "[1, 2, 3]")
    (root / "jobs.txt").write_text("my own job list\n" * 40)
    return root


CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    # files atzoo writes: never over an existing file, never outside the chosen folder
    "emit-jobs-onto-an-existing-file": (
        ["reproduce", "ar-at-table3", *COST_ROWS, "--emit-jobs", "jobs.txt", "--out", "repro"],
        ("--emit-jobs jobs.txt exists", "--force")),
    "manifest-row-id-climbs-out-of-out": (
        ["reproduce", "evil_table.yaml", "--plan", "--out", "repro"], ("row id '../escaped'", "..")),
    "export-dataset-name-climbs-out-of-out": (
        ["export", "evil_dataset", "--out", "exp"], ("evil_dataset/model_meta.json", "'../../escaped'")),
    "export-name-climbs-out-of-out": (
        ["export", RUN, "--name", "../..", "--out", "exp"], ("--name '../..'", "identifier")),
    # integer ranges
    "seeds-range-of-three-billion": (
        ["reproduce", "ar-at-table3", "--plan", "--seeds", "0-3000000000", "--out", "repro"],
        ("--seeds", "3000000001 seeds", "at most")),
    "seed-above-the-maximum": (
        ["reproduce", "ar-at-table3", "--plan", "--seeds", "4294967296", "--out", "repro"],
        ("--seeds", "[0, 4294967295]", "4294967296")),
    "seeds-range-backwards": (
        ["reproduce", "ar-at-table3", "--plan", "--seeds", "5-2", "--out", "repro"], ("--seeds", "5-2")),
    "step-cost-negative": (
        ["reproduce", "ar-at-table3", *MART, "--plan", "--step-cost", "negative_cost.json", "--out", "repro"],
        ("negative_cost.json", "ratio_to_at", "positive")),
    "step-cost-nan": (
        ["reproduce", "ar-at-table3", *MART, "--plan", "--step-cost", "nan_cost.json", "--out", "repro"],
        ("nan_cost.json", "ratio_to_at", "positive")),
    # the one bounded JSON/JSONL reader: same error in collect and compare
    "collect-metrics-bad-last-line": (
        ["reproduce", "ar-at-table19-cost", *COST_ROWS, "--out", "repro_bad_last", "--collect"],
        ("metrics.jsonl line 2 is not valid JSON",)),
    "compare-metrics-bad-last-line": (
        ["compare", "repro_bad_last", "--out", "board"], ("metrics.jsonl line 2 is not valid JSON",)),
    "collect-metrics-row-not-an-object": (
        ["reproduce", "ar-at-table19-cost", *COST_ROWS, "--out", "repro_not_object", "--collect"],
        ("metrics.jsonl line 2 is not a JSON object",)),
    "compare-metrics-row-not-an-object": (
        ["compare", "repro_not_object", "--out", "board"], ("metrics.jsonl line 2 is not a JSON object",)),
    "export-eval-json-not-json": (
        ["export", "eval_not_json", "--out", "exp"], ("eval_not_json/eval.json is not valid JSON",)),
    "export-eval-json-string-eps": (
        ["export", "eval_string_eps", "--out", "exp"], ("eval_string_eps/eval.json is damaged", "'eps'")),
    "export-eval-json-huge": (
        ["export", "eval_huge", "--out", "exp"], ("eval_huge/eval.json is larger than",)),
    # outside models
    "eval-factory-needing-arguments": (
        ["eval", "hostile_factories:needs_args", "--dataset", "digits", "--attacks", "clean", "--out", "ext"],
        ("hostile_factories:needs_args", "argument 'width'", "without arguments")),
    "eval-factory-sys-exit": (
        ["eval", "sys:exit", "--dataset", "digits", "--attacks", "clean", "--out", "ext"],
        ("sys:exit", "exit")),
    # links in a run directory: never written through
    "resume-with-the-lock-a-link": (
        ["train", "at", *TRAIN, "run.max_steps=2", "--resume", "--out", "linked_lock"],
        ("linked_lock/.atzoo.lock is a symbolic link", "never writes through links")),
    "resume-with-metrics-a-link": (
        ["train", "at", *TRAIN, "run.max_steps=2", "--resume", "--out", "linked_metrics"],
        ("linked_metrics/metrics.jsonl is a symbolic link", "never writes through links")),
    # numbers that are not numbers
    "eval-weights-all-nan": (
        ["eval", "nan_weights", "--attacks", "clean"], ("non-finite", "nan_weights")),
    "eval-normalisation-std-nan": (
        ["eval", "nan_std", "--attacks", "clean"], ("nan_std/model_meta.json", "'std'", "finite")),
    "eval-std-flag-nan": (
        ["eval", "hostile_factories:linear", "--dataset", "digits", "--attacks", "clean", "--mean", "0.5",
         "--std", "nan", "--out", "ext"], ("--std expects finite positive numbers", "'nan'")),
    # data that changed under a run
    "resume-after-the-training-split-changed": (
        ["train", "at", *NPZ_TRAIN, "run.max_steps=2", "--resume", "--out", "npz_run"],
        ("training split of npz:split.npz", "changed", "npz_run")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(
    name: str, hostile: Path, tmp_path: Path, isolated: pytest.MonkeyPatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    ws = workspace(hostile, tmp_path / "ws")
    isolated.chdir(ws)
    isolated.syspath_prepend(str(ws))
    isolated.setenv("ATZOO_DATA", str(ws / "empty_data"))
    if name.startswith("resume-after"):  # the npz path is the one the run recorded
        argv = [a.replace("npz:split.npz", f"npz:{hostile / 'split.npz'}") for a in CASES[name][0]]
    else:
        argv = CASES[name][0]
    before = snapshot(ws)
    capsys.readouterr()
    code = run(list(argv))
    captured = capsys.readouterr()
    assert code == 2, captured.err
    check_error_line(captured.err, CASES[name][1])
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(ws) == before
    assert not (tmp_path / "escaped").exists() and not (ws.parent / "escaped").exists()


# --------------------------------------------------------------------------- cases that succeed


def _in(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ws)
    monkeypatch.setenv("ATZOO_DATA", str(ws / "empty_data"))


def test_emit_jobs_replaces_an_existing_file_with_force(hostile: Path, tmp_path: Path, isolated, capsys) -> None:  # noqa: F811
    ws = workspace(hostile, tmp_path / "ws")
    _in(ws, isolated)
    assert run(["reproduce", "ar-at-table3", *COST_ROWS, "--emit-jobs", "jobs.txt", "--force", "--out", "r"]) == 0
    assert (ws / "jobs.txt").read_text().startswith("test -f ")


def test_a_lock_naming_an_impossible_pid_is_stale(hostile: Path, tmp_path: Path, isolated, capsys) -> None:  # noqa: F811
    """A lock record whose PID no OS can have is damaged, so nobody holds the run: it is
    evaluated (with ``flock`` and without it), not an OverflowError."""
    from atzoo.engine import lock

    ws = workspace(hostile, tmp_path / "ws")
    _in(ws, isolated)
    assert lock.read_holder(ws / "pid_overflow" / ".atzoo.lock") is None
    isolated.setattr(lock, "fcntl", None)
    assert lock.RunLock(ws / "pid_overflow").live_holder() is None
    capsys.readouterr()
    assert run(["eval", "pid_overflow", "--attacks", "clean", "--no-progress"]) == 0, capsys.readouterr().err


def test_training_on_a_set_without_test_split_writes_its_meta(hostile: Path, tmp_path: Path, isolated, capsys) -> None:  # noqa: F811
    """An empty test split used to crash the fingerprint after training (no model_meta.json)."""
    ws = workspace(hostile, tmp_path / "ws")
    _in(ws, isolated)
    code = run(["train", "at", *NPZ_TRAIN, "--dataset", "npz:train_only.npz", "--out", "train_only_run"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((ws / "train_only_run" / "model_meta.json").read_text())
    assert meta["dataset_identity"]["test"]["n"] == 0


def test_refusing_a_pickle_shows_no_library_warning(hostile: Path, tmp_path: Path, isolated, capsys) -> None:  # noqa: F811
    """torch's ``UserWarning: Detected pickle protocol`` must not precede atzoo's one line."""
    from test_bad_input import _Planted

    ws = workspace(hostile, tmp_path / "ws")
    _in(ws, isolated)
    torch.save({"weight": _Planted()}, ws / "planted4.pt", pickle_protocol=4)  # torch warns on protocol != 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = run(["train", "arrest", *TRAIN, "method.pretrained=planted4.pt", "--out", "new"])
    assert code == 2
    check_error_line(capsys.readouterr().err, ("refusing to load method.pretrained",))
    assert [str(w.message)[:80] for w in caught if "pickle" in str(w.message).lower()] == []


def test_disk_full_names_the_file(hostile: Path, tmp_path: Path, isolated, capsys) -> None:  # noqa: F811
    """ENOSPC while writing: the line names the file; the earlier content is intact."""
    from atzoo.files import common

    ws = workspace(hostile, tmp_path / "ws")
    _in(ws, isolated)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    isolated.setattr(common.os, "fsync", full)
    code = run(["reproduce", "ar-at-table3", *COST_ROWS, "--emit-jobs", "jobs.txt", "--force", "--out", "r"])
    assert code == 2
    check_error_line(capsys.readouterr().err, ("jobs.txt", "No space left on device"))
    assert (ws / "jobs.txt").read_text() == "my own job list\n" * 40
    assert not [p for p in ws.iterdir() if p.name.startswith(".tmp-")]


# --------------------------------------------------------------------------- concurrent eval.json


def _payload(attack: str) -> dict:
    from atzoo.eval.results import encode_flags

    flags = {"clean": encode_flags([True] * 8), attack: encode_flags([True, False] * 4)}
    # one set of weights, data, threat model and images: results that may merge
    return {"method": "at", "model": "small_cnn", "dataset": "digits", "norm": "linf", "eps": 8 / 255,
            "weights_fingerprint": "0123456789abcdef", "eval_set": {"n": 8}, "examples": {"n": 8, "flags": flags},
            f"{attack}_acc": 50.0}


def _merge_one(run_dir: str, attack: str) -> None:
    from atzoo.eval.results import write_eval_json

    write_eval_json(run_dir, _payload(attack), [attack])


def test_concurrent_evaluations_of_one_run_lose_no_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four processes merge four attacks into one eval.json at once (each reads, waits, writes):
    the read-merge-write runs under the run's lock, so every attack is in the file."""
    from atzoo.eval import results

    original = results.read_eval_json

    def slow_read(path):  # widen the window between the read and the write
        payload = original(path)
        time.sleep(0.3)
        return payload

    monkeypatch.setattr(results, "read_eval_json", slow_read)
    attacks = ["pgd5", "pgd10", "pgd20", "fgsm"]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_merge_one, args=(str(tmp_path), a)) for a in attacks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    merged = json.loads((tmp_path / "eval.json").read_text())
    assert sorted(merged["examples"]["flags"]) == sorted(["clean", *attacks])
    assert all(merged[f"{a}_acc"] == 50.0 for a in attacks)


# --------------------------------------------------------------------------- Python API


def test_api_accepts_a_comma_separated_attack_string() -> None:
    import atzoo

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    data = [(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
    result = atzoo.evaluate(net, data, attacks="clean,pgd2", n_ex=8)
    assert result["clean_acc"] is not None and result["pgd2_acc"] is not None


@pytest.mark.parametrize("kwargs, phrases", [
    ({"model": "runs/some-run"}, ("model", "nn.Module", "atzoo.load")),
    ({"data": torch.rand(8, 1, 8, 8)}, ("data", "Tensor", "TensorDataset")),
    ({"attacks": ["clean", 20]}, ("attacks", "20")),
    ({"attacks": "clean,pgx"}, ("unknown attack 'pgx'",)),
    ({"n_ex": 0}, ("n_ex",)),
])
def test_api_refuses_wrong_arguments_with_its_own_exception(kwargs: dict, phrases: tuple[str, ...]) -> None:
    import atzoo

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    call = {"model": net, "data": [(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))], **kwargs}
    with pytest.raises(atzoo.AtzooError) as info:
        atzoo.evaluate(call.pop("model"), call.pop("data"), **call)
    for phrase in phrases:
        assert phrase in str(info.value), str(info.value)


def test_api_refuses_an_existing_file_as_out(tmp_path: Path) -> None:
    import atzoo

    precious = tmp_path / "thesis.tex"
    precious.write_text("precious\n")
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(atzoo.AtzooError, match="out .*thesis.tex.* is a file"):
        atzoo.evaluate(net, [(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))], attacks="clean", out=precious)
    assert precious.read_text() == "precious\n"


def test_api_refuses_non_finite_weights_before_writing(tmp_path: Path) -> None:
    import atzoo

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        net[1].weight.fill_(float("nan"))
    with pytest.raises(atzoo.AtzooError, match="non-finite"):
        atzoo.evaluate(net, [(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))], attacks="clean", out=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_api_load_and_compare_name_the_argument(tmp_path: Path) -> None:
    import atzoo

    precious = tmp_path / "board.md"
    precious.write_text("precious\n")
    with pytest.raises(atzoo.AtzooError, match="run_dir must be a path"):
        atzoo.load(torch.nn.Linear(2, 2))
    with pytest.raises(atzoo.AtzooError, match="runs must be a path"):
        atzoo.compare([tmp_path, 5])
    with pytest.raises(atzoo.AtzooError, match="out .*board.md is a file"):
        atzoo.compare([tmp_path], out=precious)
    assert precious.read_text() == "precious\n"


def test_one_integer_range_validator() -> None:
    """Seeds, PIDs and counts share :func:`check_int_range`: bools, strings and huge ints are refused
    in microseconds, naming the option (a 5000-digit int is not even printed)."""
    from atzoo.commands.reproduce import parse_seeds
    from atzoo.errors import AtzooError
    from atzoo.files.common import check_int_range

    assert check_int_range(7, "--seed", 0, 10) == 7
    for value in (True, "3", -1, 11, 10**5000):
        with pytest.raises(AtzooError, match=r"--seed must be in \[0, 10\]"):
            check_int_range(value, "--seed", 0, 10)
    assert parse_seeds("0-2,5,1") == [0, 1, 2, 5]
    started = time.process_time()
    with pytest.raises(AtzooError, match="names 4294967296 seeds; at most 1000"):
        parse_seeds("0-4294967295")
    assert time.process_time() - started < 0.1
