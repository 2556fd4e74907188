"""The ground floor (``atzoo.files.common``): atomic writes honour the umask; small helpers."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from leaderboard_fixtures import standard_set

from atzoo.attacks.sharding import ProcessGroup, ShardedRun
from atzoo.files.common import atomic_write_bytes, compare_state_dicts, flatten, load_yaml
from atzoo.errors import AtzooError, ConfigError
from atzoo.report import OUTPUT_FILES, compare


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_write_creates_files_with_the_umask_mode(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"one")
    assert _mode(target) == 0o644 and target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two")  # replacing keeps the umask mode too
    assert _mode(target) == 0o644 and target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary left behind


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_leaderboard_plot_and_autoattack_state_are_0644(tmp_path: Path, umask_022: None) -> None:
    _, written = compare(standard_set(tmp_path / "runs"), out=tmp_path / "board")
    assert set(written) == set(OUTPUT_FILES)  # the md/csv/json/html files and tradeoff.png
    assert {name: _mode(path) for name, path in written.items()} == {name: 0o644 for name in OUTPUT_FILES}

    state = tmp_path / "aa" / "autoattack_state.json"
    run = ShardedRun(n=4, chunk_size=2, group=ProcessGroup(), state_path=state, settings={"k": 1})
    run.run(lambda index, start, stop: {"flag": [True] * (stop - start)})
    assert _mode(state) == 0o644


def test_flatten_joins_nested_keys() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": 3}) == {"a.b": 1, "a.c.d": [2], "e": 3}
    assert flatten({"a": {"b": 1.5}}, sep="/") == {"a/b": 1.5}


def test_load_yaml_error_is_one_line_of_the_given_kind() -> None:
    with pytest.raises(ConfigError, match=r"^recipe x.yaml is not valid YAML: ") as info:
        load_yaml("a: [1,\n", "recipe x.yaml", ConfigError)
    assert "\n" not in str(info.value)
    with pytest.raises(AtzooError):
        load_yaml("a: : :", "card c.md")


def test_compare_state_dicts_names_missing_unexpected_and_wrong_shapes() -> None:
    expected = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    assert compare_state_dicts(expected, {"w": torch.ones(2, 3), "b": torch.ones(2)}) is None
    bad = compare_state_dicts(expected, {"w": torch.ones(3, 3), "x": torch.ones(1)})
    assert (bad.missing, bad.unexpected, bad.wrong_shape) == (["b"], ["x"], ["w"])
