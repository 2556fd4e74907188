"""Model interchange: timm's own keys in model.safetensors, timm's pretrained weights,
``atzoo eval`` of models from elsewhere, and the RobustBench export."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import atzoo
from atzoo.cli import run as cli
from atzoo.errors import CheckpointError, ConfigError

TINY = ["--dataset", "digits", "--epochs", "1", "data.train_subset=128", "run.max_steps=2", "attack.steps=1",
        "run.trackers=[]", "run.evaluate=false"]


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm:resnet10t run on the 8x8 digits, with the normalisation layer on."""
    out = tmp_path_factory.mktemp("timm") / "run"
    assert cli(["train", "standard", "--model", "timm:resnet10t", *TINY, "model.normalize=true", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn") / "run"
    assert cli(["train", "standard", "--model", "small_cnn", *TINY, "--out", str(out)]) == 0
    return out


def test_timm_weights_load_into_timm_directly(timm_run: Path) -> None:
    import timm

    meta = json.loads((timm_run / "model_meta.json").read_text())
    assert meta["model"] == "timm:resnet10t" and meta["normalize"] is True and len(meta["mean"]) == 1
    net = timm.create_model("resnet10t", num_classes=10, in_chans=1).eval()
    net.load_state_dict(load_file(timm_run / "model.safetensors"), strict=True)
    x = torch.rand(5, 1, 8, 8)
    normalized = (x - torch.tensor(meta["mean"]).view(1, -1, 1, 1)) / torch.tensor(meta["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        assert torch.equal(net(normalized), atzoo.load(timm_run)(x))


def test_timm_export_of_earlier_versions_still_loads(timm_run: Path, tmp_path: Path) -> None:
    """Files written with the wrapper's ``net.`` prefix (before this change) keep loading."""
    model = atzoo.load(timm_run)
    old = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(old))
    (tmp_path / "model_meta.json").write_text((timm_run / "model_meta.json").read_text())
    assert any(k.startswith("net.") for k in load_file(old))
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(atzoo.load(tmp_path)(x), model(x))


def _fake_hub_cache(home: Path) -> dict[str, torch.Tensor]:
    """timm's resnet10t weights as the Hugging Face cache holds them (random values)."""
    import timm

    repo = home / "hub" / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.manual_seed(3)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet10t", num_classes=1000).state_dict().items()}
    save_file(state, str(snapshot / "model.safetensors"))
    return state


def _in_subprocess(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_pretrained_loads_timm_weights_and_offline_is_one_line(tmp_path: Path) -> None:
    """One process (offline): timm's cached weights load; once the cache is gone, training
    with model.pretrained=true is one line, exit 2, and nothing is written."""
    state = _fake_hub_cache(tmp_path / "hf")
    torch.save(state["conv1.0.weight"], tmp_path / "conv1.pt")
    code = f"""
import shutil, sys, torch, atzoo
from atzoo.cli import run
m = atzoo.create_model('timm:resnet10t', 10, pretrained=True)
print(torch.equal(m.net.conv1[0].weight, torch.load({str(tmp_path / 'conv1.pt')!r})), m.fc.out_features)
shutil.rmtree({str(tmp_path / 'hf' / 'hub')!r})
print('exit', run(['train', 'standard', '--model', 'timm:resnet10t', '--dataset', 'digits', 'model.pretrained=true',
                   '--out', {str(tmp_path / 'run')!r}]))
"""
    done = _in_subprocess(code, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert done.stdout.split() == ["True", "10", "exit", "2"], done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atzoo: error: model.pretrained: cannot load timm's pretrained")
    assert not (tmp_path / "run").exists()


def test_pretrained_needs_a_timm_model() -> None:
    with pytest.raises(ConfigError, match="model.pretrained=true needs a timm:NAME model"):
        atzoo.build_config(None, ["model.pretrained=true"], method={"name": "standard"})
    with pytest.raises(ConfigError, match="needs a timm:NAME model"):
        atzoo.create_model("small_cnn", 10, pretrained=True)


def test_eval_accepts_timm_spec_with_weights(timm_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``atzoo eval timm:NAME --weights`` measures what ``atzoo eval RUN`` measures."""
    meta = json.loads((timm_run / "model_meta.json").read_text())
    mean, std = ",".join(map(str, meta["mean"])), ",".join(map(str, meta["std"]))
    assert cli(["eval", "timm:resnet10t", "--weights", str(timm_run / "model.safetensors"), "--dataset", "digits",
                "--mean", mean, "--std", std, "--attacks", "clean", "--out", str(tmp_path / "ext"),
                "--no-progress"]) == 0
    assert cli(["eval", str(timm_run), "--attacks", "clean", "--no-progress"]) == 0
    external = json.loads((tmp_path / "ext" / "eval.json").read_text())
    own = json.loads((timm_run / "eval.json").read_text())
    assert external["model"] == "timm:resnet10t" and external["clean_acc"] == own["clean_acc"]
    capsys.readouterr()
    assert cli(["eval", "timm:resnet10t", "--dataset", "digits", "--attacks", "clean"]) == 2
    assert "timm:resnet10t needs --weights FILE" in capsys.readouterr().err


def test_eval_accepts_a_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n\ndef tiny():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    torch.save(net.state_dict(), tmp_path / "tiny.pt")
    assert cli(["eval", "mynets:tiny", "--weights", str(tmp_path / "tiny.pt"), "--dataset", "digits",
                "--attacks", "clean,fgsm", "--no-progress"]) == 0
    payload = json.loads((tmp_path / "eval.json").read_text())  # beside the weights file
    from atzoo.data import create_dataset

    test = create_dataset("digits").test
    with torch.no_grad():
        expected = 100.0 * net(test.x.float() / 255).argmax(1).eq(test.y).float().mean().item()
    assert payload["clean_acc"] == pytest.approx(expected) and payload["fgsm_acc"] <= payload["clean_acc"]


def test_torchvision_spec_loads_weights_strictly(tmp_path: Path) -> None:
    import torchvision

    from atzoo.models.external import build_external_model

    torch.manual_seed(0)
    reference = torchvision.models.get_model("resnet18", num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "r18.pt")
    model = build_external_model("torchvision:resnet18", num_classes=10, in_channels=3, weights=tmp_path / "r18.pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    torch.save(torchvision.models.get_model("resnet34", num_classes=10).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        build_external_model("torchvision:resnet18", num_classes=10, in_channels=3, weights=tmp_path / "r34.pt")
    with pytest.raises(ConfigError, match="unknown torchvision model 'resnet9000'"):
        build_external_model("torchvision:resnet9000", num_classes=10, in_channels=3, weights=tmp_path / "r18.pt")


@pytest.mark.parametrize("which", ["timm_run", "cnn_run"])
def test_robustbench_export_rebuilds_the_model(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    run_dir: Path = request.getfixturevalue(which)
    out = tmp_path / "rb"
    assert cli(["export", str(run_dir), "--format", "robustbench", "--out", str(out), "--name", "mymodel"]) == 0
    checkpoint = out / "models" / "digits" / "Linf" / "mymodel.pt"
    spec = importlib.util.spec_from_file_location("mymodel", out / "mymodel.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    model = module.get_model()
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"], strict=True)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), atzoo.load(run_dir)(x), atol=1e-6)
    readme = (out / "mymodel.md").read_text()  # RobustBench cannot benchmark the digits: no call it would refuse
    assert "benchmark(model" not in readme and f"atzoo eval {run_dir.as_posix()} --attacks clean,pgd20,aa" in readme
    assert "CIFAR-10, CIFAR-100 and ImageNet only, not `digits`" in readme
    before = checkpoint.read_bytes()
    assert cli(["export", str(run_dir), "--out", str(out), "--name", "mymodel"]) == 2  # never overwrites
    assert checkpoint.read_bytes() == before
    assert cli(["export", str(run_dir), "--format", "onnx", "--out", str(out)]) == 2


def test_robustbench_readme_calls_benchmark_only_for_its_datasets() -> None:
    from atzoo.report.export import readme_evaluation

    assert 'benchmark(model, dataset="cifar10", threat_model="Linf", eps=0.0313725)' in readme_evaluation(
        "cifar10", "Linf", "0.0313725", "runs/x")
    assert "benchmark(" not in readme_evaluation("imagenette", "Linf", "0.03", "runs/x")
