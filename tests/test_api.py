"""The public Python API (``atzoo.__all__``) and the runnable examples of ``docs/api.md``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import atzoo
from atzoo.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = {"attack": {"steps": 1}, "run": {"max_steps": 2, "trackers": []}, "data": {"train_subset": 128}}


def test_every_public_name_resolves() -> None:
    for name in atzoo.__all__:
        assert getattr(atzoo, name) is not None, name
    assert callable(atzoo.load) and callable(atzoo.train) and callable(atzoo.evaluate) and callable(atzoo.compare)
    assert "arat" in atzoo.list_methods() and "arat_cifar10_resnet18" in atzoo.list_recipes()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        atzoo.nope  # noqa: B018


def test_import_atzoo_loads_no_torch() -> None:
    """``import atzoo`` stays cheap: the API is imported on first use."""
    code = "import sys, atzoo; print('torch' in sys.modules, atzoo.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", atzoo.__version__]


def _manual_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * model(x).argmax(1).eq(y).float().mean().item()


def test_evaluate_any_module_without_features() -> None:
    """An nn.Sequential has no forward_features: it is evaluated, invariance is None."""
    from atzoo.data import create_dataset

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    result = atzoo.evaluate(net, "digits", attacks=["clean", "pgd20"], n_ex=50)
    test = create_dataset("digits", test_subset=50).test
    assert result["n_examples"] == 50
    assert result["clean_acc"] == pytest.approx(_manual_accuracy(net, test.x.float() / 255, test.y))
    assert result["pgd20_acc"] <= result["clean_acc"] and result["invariance_cos"] is None


def test_evaluate_accepts_a_loader_and_batches() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 4))
    x, y = torch.rand(40, 3, 4, 4), torch.randint(0, 4, (40,))
    expected = _manual_accuracy(net, x, y)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    assert atzoo.evaluate(net, loader, attacks=["clean"])["clean_acc"] == pytest.approx(expected)
    assert atzoo.evaluate(net, [(x[:20], y[:20]), (x[20:], y[20:])], attacks=["clean"])["clean_acc"] == pytest.approx(expected)
    assert atzoo.evaluate(net, loader, attacks=["clean"], n_ex=10)["n_examples"] == 10
    with pytest.raises(ConfigError, match="n_ex must be a positive integer"):
        atzoo.evaluate(net, loader, n_ex=0)


def test_train_load_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = atzoo.train("at", model="small_cnn", dataset="digits", epochs=1, eval={"attacks": ["clean"]},
                      **TINY, **{"optim.lr": 0.05})
    assert run == Path("runs") / run.name and run.name.startswith("at-small_cnn-digits-s0-")  # settings hash
    from atzoo.config import from_yaml

    saved = from_yaml((run / "config.yaml").read_text())
    assert (saved.optim.lr, saved.attack.steps, saved.run.max_steps) == (0.05, 1, 2)
    model = atzoo.load(run)
    assert isinstance(model, nn.Module) and not model.training
    board = atzoo.compare(tmp_path)  # a folder holding runs
    assert [e.runs[0].path.resolve() for g in board.groups for e in g.entries] == [run.resolve()]
    with pytest.raises(ConfigError, match="unknown keyword 'lr'"):
        atzoo.train("at", lr=0.1)


def test_docs_api_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ``python`` block of docs/api.md, in order, in a fresh folder."""
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.S)
    assert len(blocks) >= 5
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102 - the documentation's own code
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "SmallCNN False" and printed[-1] == "True"
    assert printed[2].endswith("None")  # the Sequential has no invariance
