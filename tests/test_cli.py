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
                     "Valid choices: methods, models, datasets, attacks, recipes"]
    assert "Traceback" not in captured.err + captured.out


def test_unknown_kind_lists_every_valid_choice_including_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["list", "foo"]) == 2
    assert capsys.readouterr().err.strip() == ("atzoo: error: unknown registry 'foo'. "
                                               "Valid choices: methods, models, datasets, attacks, recipes")
    assert run(["list", "recipe"]) == 2
    assert "Did you mean 'recipes'?" in capsys.readouterr().err


def test_list_recipes_into_a_pipe_keeps_whole_names(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a terminal (a pipe, a file): the table at its natural width, names never cut (``imagene…``)."""
    from atzoo.config.resources import list_recipes

    assert run(["list", "recipes"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for name in list_recipes():
        assert f" {name} " in out
    assert " imagenette " in out


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


def test_eval_summary_of_an_outside_model_has_no_placeholders(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside model has no training method and may have no AutoAttack: no ``? /`` and no
    ``(first None)`` in the summary."""
    from atzoo.commands.eval import _print_summary, summary_title

    payload = {"method": None, "model": "timm:resnet18", "dataset": "cifar10", "norm": "linf", "eps": 8 / 255,
               "n_examples": 16, "clean_acc": 50.0, "pgd20_acc": 25.0}
    assert summary_title(payload) == "timm:resnet18 / cifar10"
    assert summary_title({**payload, "method": "at"}) == "at / timm:resnet18 / cifar10"
    _print_summary(payload, tmp_path)
    out = capsys.readouterr().out
    assert "?" not in out and "None" not in out and "AutoAttack %" in out
    _print_summary({**payload, "autoattack_acc": 20.0, "aa_n_examples": 16}, tmp_path)
    assert "AutoAttack % (first 16)" in capsys.readouterr().out


def test_cost_note_names_fp32_not_accelerates_no() -> None:
    from atzoo.report.cost import describe, precision_label

    profile = {"device": "cpu", "device_name": "AMD EPYC 7B13", "processes": 1, "threads": 2, "precision": "no"}
    assert describe(profile) == "cpu (AMD EPYC 7B13), 1 process, 2 threads, precision fp32"
    assert precision_label("no+attack-bf16") == "fp32, attack bf16" and precision_label("bf16") == "bf16"
