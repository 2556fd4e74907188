"""CLI conventions: --version, list, one-line errors with exit code 2, ATZOO_DEBUG."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from atzoo import __version__
from atzoo.cli import run


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"atzoo {__version__}"


@pytest.mark.parametrize("kind", ["methods", "models", "datasets", "attacks"])
def test_list_kinds(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["list", kind]) == 0
    out = capsys.readouterr().out
    assert f"atzoo {kind}" in out


def test_list_methods_shows_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "standard" in out and "at" in out


def test_misspelt_kind_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["list", "modles"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines == ["atzoo: error: unknown registry 'modles'. Did you mean 'models'? "
                     "Valid choices: methods, models, datasets, attacks"]
    assert "Traceback" not in captured.err + captured.out


def test_unknown_option_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["list", "methods", "--bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("atzoo: error: No such option: --bogus")


def test_real_process_exit_code_and_debug_traceback() -> None:
    cmd = [sys.executable, "-m", "atzoo", "list", "modles"]
    env = {**os.environ, "ATZOO_DEBUG": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "ATZOO_DEBUG": "1"}, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
