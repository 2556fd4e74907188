"""Checkpoint I/O: atomic writes, SHA-256 manifest, keep-last-K, fallback, safe loading."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from atzoo.engine.checkpoint import (
    MANIFEST,
    CheckpointData,
    atomic_write_bytes,
    atomic_write_json,
    find_resume_checkpoint,
    join_tensors,
    list_checkpoints,
    load_checkpoint,
    load_pickle_safely,
    save_checkpoint,
    split_tensors,
    verify_checkpoint,
)
from atzoo.engine.rng import capture_rng, restore_rng
from atzoo.errors import CheckpointError


def sample_data(value: float = 1.0) -> CheckpointData:
    weights = {"model.w": torch.full((3, 4), value), "model.n": torch.tensor(7, dtype=torch.int64)}
    momentum = {"state": {0: {"momentum_buffer": torch.full((3, 4), value / 2)}},
                "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]}
    return CheckpointData(
        tensors={"training": weights},
        pickled={"optimizer": {"optimizer": momentum, "scheduler": {"last_epoch": 3}}},
        state={"position": {"epoch": 1, "batch": 2, "global_step": 5}},
    )


def test_round_trip_and_manifest(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 5, sample_data(2.5), keep=3)
    assert path.name == "step-000000005"
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"training.safetensors", "optimizer.pt", "state.json"}
    for name, entry in manifest["files"].items():
        assert entry["bytes"] == (path / name).stat().st_size and len(entry["sha256"]) == 64
    data = load_checkpoint(path)
    assert torch.equal(data.tensors["training"]["model.w"], torch.full((3, 4), 2.5))
    assert data.tensors["training"]["model.n"].item() == 7
    buf = data.pickled["optimizer"]["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(buf, torch.full((3, 4), 1.25))
    assert data.state["position"] == {"epoch": 1, "batch": 2, "global_step": 5}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_keep_last_k_and_ordering(tmp_path: Path) -> None:
    for step in (1, 2, 10, 3):  # step 3 written last but older than step 10
        save_checkpoint(tmp_path, step, sample_data(float(step)), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000003", "step-000000010"]
    point = find_resume_checkpoint(tmp_path)
    assert point is not None and point.path.name == "step-000000010" and point.skipped == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_damaged_checkpoint_names_file_and_falls_back(tmp_path: Path, damage: str) -> None:
    save_checkpoint(tmp_path, 1, sample_data(1.0), keep=3)
    newest = save_checkpoint(tmp_path, 2, sample_data(2.0), keep=3)
    target = newest / "training.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip":
        blob = bytearray(target.read_bytes())
        blob[-1] ^= 0xFF
        target.write_bytes(bytes(blob))
    elif damage == "delete":
        target.unlink()
    else:
        target = newest / MANIFEST
        target.write_text("{not json")
    with pytest.raises(CheckpointError) as info:
        verify_checkpoint(newest)
    assert str(target) in str(info.value) and "\n" not in str(info.value)
    point = find_resume_checkpoint(tmp_path)
    assert point is not None and point.path.name == "step-000000001"
    assert len(point.skipped) == 1 and str(target) in point.skipped[0]
    assert torch.equal(point.data.tensors["training"]["model.w"], torch.ones(3, 4))


def test_no_usable_checkpoint_is_an_error_and_none_is_none(tmp_path: Path) -> None:
    assert find_resume_checkpoint(tmp_path / "absent") is None
    path = save_checkpoint(tmp_path, 1, sample_data(), keep=1)
    (path / "state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        find_resume_checkpoint(tmp_path)


def test_half_written_checkpoint_is_ignored_and_cleaned(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, sample_data(1.0), keep=3)
    # A crash while writing step 2: a temporary dir without manifest, and a final-named
    # dir that never got its manifest (e.g. copied by hand).
    (tmp_path / ".tmp-step-000000002.999").mkdir()
    (tmp_path / ".tmp-step-000000002.999" / "training.safetensors").write_bytes(b"partial")
    (tmp_path / "step-000000002").mkdir()
    point = find_resume_checkpoint(tmp_path)
    assert point is not None and point.path.name == "step-000000001"
    assert "MANIFEST.json is missing" in point.skipped[0]
    save_checkpoint(tmp_path, 2, sample_data(2.0), keep=3)  # replaces the broken step-2
    assert not (tmp_path / ".tmp-step-000000002.999").exists()
    assert torch.equal(load_checkpoint(tmp_path / "step-000000002").tensors["training"]["model.w"],
                       torch.full((3, 4), 2.0))


def test_non_finite_weights_are_never_written(tmp_path: Path) -> None:
    data = sample_data()
    data.tensors["training"]["model.w"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="not finite"):
        save_checkpoint(tmp_path, 1, data, keep=1)
    assert list_checkpoints(tmp_path) == []


class _Payload:
    """Unpickling this runs ``os.system``: what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.marker}",))


def test_planted_pickle_is_refused_even_with_a_valid_manifest(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 1, sample_data(), keep=1)
    evil = io.BytesIO()
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _Payload(marker)}, evil)
    (path / "optimizer.pt").write_bytes(evil.getvalue())
    manifest = json.loads((path / MANIFEST).read_text())  # the attacker fixes the checksum too
    import hashlib

    manifest["files"]["optimizer.pt"] = {"sha256": hashlib.sha256(evil.getvalue()).hexdigest(),
                                         "bytes": len(evil.getvalue())}
    (path / MANIFEST).write_text(json.dumps(manifest))
    verify_checkpoint(path)  # checksums agree ...
    with pytest.raises(CheckpointError, match="refusing to load checkpoint file .*optimizer.pt"):
        load_checkpoint(path)  # ... but the safe unpickler refuses to build the object
    with pytest.raises(CheckpointError):
        load_pickle_safely(path / "optimizer.pt")
    assert not marker.exists()
    # Control: an ordinary torch.load of the same file runs the payload, so the refusal
    # above is what kept the planted code from running.
    torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_is_refused(tmp_path: Path) -> None:
    file, marker = tmp_path / "x.pt", tmp_path / "code-ran"
    file.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match=str(file)):
        load_pickle_safely(file)
    assert not marker.exists()
    pickle.loads(file.read_bytes())  # control: a plain unpickler runs it
    assert marker.exists()


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "eval.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_split_join_tensors_round_trip() -> None:
    state = {"acc": 0.75, "hist": [torch.arange(3), (1, "a")], "nested": {"t": torch.ones(2, 2), "n": None}}
    tensors: dict[str, torch.Tensor] = {}
    plain = split_tensors(state, "method", tensors)
    json.dumps(plain)  # JSON-serialisable
    back = join_tensors(json.loads(json.dumps(plain)), tensors)
    assert back["acc"] == 0.75 and back["hist"][1] == (1, "a") and back["nested"]["n"] is None
    assert torch.equal(back["hist"][0], torch.arange(3)) and torch.equal(back["nested"]["t"], torch.ones(2, 2))
    with pytest.raises(TypeError):
        split_tensors({"bad": object()}, "method", {})


def test_rng_state_round_trip_through_json_and_tensors() -> None:
    state = capture_rng()
    tensors: dict[str, torch.Tensor] = {}
    plain = json.loads(json.dumps(split_tensors(state, "rank0", tensors)))
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(5)  # move every generator on
    restore_rng(join_tensors(plain, tensors))
    assert random.random() == expected[0] and float(np.random.rand()) == expected[1]
    assert torch.equal(torch.rand(3), expected[2])
