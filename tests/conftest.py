"""Shared test fixtures: single-threaded torch, paths to the real CIFAR subsets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ATZOO_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_configure(config: pytest.Config) -> None:
    import torch

    # Two cores on the CI machine: one intra-op thread keeps parallel tests from thrashing.
    torch.set_num_threads(1)
    # atzoo's per-machine cache (dataset fingerprints, bench step-cost records): a fresh
    # folder per session, so tests neither read nor write the user's.
    import tempfile

    os.environ["ATZOO_CACHE"] = tempfile.mkdtemp(prefix="atzoo-test-cache-")


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Every test starts single-threaded: a command that sets torch's thread count for its own
    measurement (``atzoo bench ... --threads``) must not leave later tests multi-threaded,
    where idle OpenMP workers spin on the second core."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder with cifar10_subset.npz and cifar100_subset.npz (skips where absent)."""
    if not (SHARED_DATA / "cifar10_subset.npz").is_file():
        pytest.skip(f"CIFAR subsets not found in {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch):
    """Runs the atzoo CLI in-process; returns (exit_code, stdout, stderr)."""
    from atzoo.cli import run

    def invoke(*args: str, capsys: pytest.CaptureFixture[str] | None = None) -> int:
        return run(list(args))

    return invoke
