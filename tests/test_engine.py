"""The training engine: schedules, run directory, resume, SWA/EMA, failures, the CLI.

End-to-end runs use the digits (8x8, 1 channel), ``small_cnn``, a 128-image training
subset and a 32-image test subset, PGD with 2 steps: a few seconds each on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from atzoo.config import MethodConfig, OptimConfig, build_config, from_yaml
from atzoo.engine import read_metrics, recompute_bn_stats, train
from atzoo.engine.checkpoint import list_checkpoints, load_checkpoint
from atzoo.engine.rundir import default_run_name
from atzoo.engine.schedules import build_scheduler, lr_factor
from atzoo.errors import AtzooError, ConfigError
from atzoo.methods.base import LossOutput, Method
from atzoo.registry import METHODS

FAST = [
    "data.train_subset=128", "data.test_subset=32", "data.batch_size=32", "optim.epochs=1",
    "attack.steps=2", "run.trackers=[]", "eval.attacks=clean,pgd20", "eval.batch_size=32",
    "eval.invariance=false", "run.log_every=1",
]
CLI_FAST = ["--model", "small_cnn", "--dataset", "digits", *FAST]


@pytest.fixture(autouse=True)
def _isolated_global_state():
    """Runs may switch on deterministic algorithms or a precision; undo it afterwards."""
    from accelerate.state import AcceleratorState

    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)
    AcceleratorState._reset_state()


def fast_config(method: str = "at", *overrides: str):
    return build_config(None, [*FAST, *overrides], method={"name": method}, model={"name": "small_cnn"},
                        data={"name": "digits"})


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (file_digest(p), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- schedules


def lrs(optim: OptimConfig, steps_per_epoch: int, steps: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=optim.lr)
    sched = build_scheduler(opt, optim, steps_per_epoch)
    values = []
    for _ in range(steps):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return values


def test_piecewise_schedule_with_first_epoch_warmup() -> None:
    optim = OptimConfig(epochs=100, lr=0.1, milestones=[75, 90], lr_decay=0.1, warmup_epochs=1, warmup_lr=0.02)
    values = lrs(optim, steps_per_epoch=3, steps=300)
    assert values[0] == values[2] == pytest.approx(0.02)  # AR-AT/LBGAT: 0.02 in epoch 1
    assert values[3] == values[224] == pytest.approx(0.1)
    assert values[225] == values[269] == pytest.approx(0.01)  # x0.1 from epoch index 75
    assert values[270] == values[299] == pytest.approx(0.001)
    no_warmup = OptimConfig(epochs=4, lr=0.1, milestones=[2], warmup_lr=None)
    assert lrs(no_warmup, 3, 12) == pytest.approx([0.1] * 6 + [0.01] * 6)


def test_cosine_and_constant_schedules() -> None:
    cosine = lrs(OptimConfig(epochs=2, lr=0.2, schedule="cosine"), steps_per_epoch=5, steps=10)
    assert cosine[0] == pytest.approx(0.2) and cosine[5] == pytest.approx(0.1)
    assert cosine[9] == pytest.approx(0.1 * (1 + math.cos(math.pi * 9 / 10)))
    assert lr_factor(OptimConfig(epochs=2, schedule="cosine"), 5)(10) == pytest.approx(0.0)
    assert lrs(OptimConfig(epochs=2, lr=0.3, schedule="constant"), 4, 8) == pytest.approx([0.3] * 8)


def test_onecycle_matches_torch_onecycle_lr() -> None:
    total = 40
    values = lrs(OptimConfig(epochs=1, lr=0.4, schedule="onecycle"), steps_per_epoch=total, steps=total)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.4)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=total, anneal_strategy="linear",
                                              cycle_momentum=False)
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert values == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert max(values) == pytest.approx(0.4)


def test_schedule_rejects_empty_epochs() -> None:
    with pytest.raises(ConfigError):
        lr_factor(OptimConfig(), 0)


# --------------------------------------------------------------------------- BN recalibration


def test_recompute_bn_stats_uses_only_the_finished_adversarial_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    batches = [(torch.rand(5, 3, 4, 4), torch.zeros(5, dtype=torch.long)) for _ in range(3)]
    model[0].running_mean.fill_(7.0)
    model[0].momentum = 0.3

    def attack(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        net(x * 100)  # a train-mode pass on other data must not count
        return (x + 0.5).clamp(0, 1.2)

    model.eval()
    used = recompute_bn_stats(model, batches, attack)
    adv = [attack(nn.Identity(), x, y) for x, y in batches]
    expected_mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in adv]).mean(0)
    expected_var = torch.stack([a.var(dim=(0, 2, 3), unbiased=True) for a in adv]).mean(0)
    assert used == 3
    assert torch.allclose(model[0].running_mean, expected_mean, atol=1e-6)
    assert torch.allclose(model[0].running_var, expected_var, atol=1e-6)
    assert model[0].momentum == 0.3 and not model.training  # settings restored


# --------------------------------------------------------------------------- end to end


def test_cli_train_standard_writes_run_dir_then_refuses_and_forces(tmp_path: Path, cli, capsys) -> None:
    out = tmp_path / "std"
    assert cli("train", "standard", *CLI_FAST, "run.trackers=[tensorboard]", "--out", str(out)) == 0
    stdout = capsys.readouterr().out
    assert f"run directory: {out}" in stdout and "clean" in stdout and "pgd20" in stdout
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors", "model_meta.json", "eval.json"):
        assert (out / name).is_file(), name
    assert not (out / "model_last.safetensors").exists()
    assert list((out / "tensorboard").rglob("events.out.tfevents*")), "TensorBoard tracker wrote nothing"
    cfg = from_yaml((out / "config.yaml").read_text())
    assert cfg.method.name == "standard" and cfg.data.train_subset == 128 and cfg.optim.epochs == 1
    rows = read_metrics(out)
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # 128 / 32 batches, log_every=1
    # --epochs 1 rescales the 100-epoch schedule: its 0.01-epoch warm-up is raised to the floor,
    # min(100 steps, 1 epoch), here the whole 4-step run at warmup_lr (issue 26)
    assert set(steps[0]["parts"]) == {"ce_clean"} and [r["lr"] for r in steps] == pytest.approx([0.02] * 4)
    assert all(0 <= r["train_acc"] <= 1 and r["images_per_s"] > 0 for r in steps)
    epoch = [r for r in rows if r["kind"] == "epoch"]
    assert len(epoch) == 1 and epoch[0]["seconds"] > 0 and epoch[0]["images_per_s"] > 0
    final = rows[-1]
    assert final["kind"] == "final" and final["weights"] == "last"
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["method"] == "standard" and evaluation["weights"] == "last"
    assert 0 <= evaluation["pgd20_acc"] <= evaluation["clean_acc"] <= 100
    from atzoo.eval import load_run_model

    model, meta = load_run_model(out)
    assert meta["method"] == "standard" and meta["num_classes"] == 10 and meta["in_channels"] == 1
    assert len(list_checkpoints(out / "checkpoints")) == 1

    before = tree_snapshot(out)
    assert cli("train", "standard", *CLI_FAST, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"atzoo: error: run directory {out} already exists; use --resume to continue it "
                   "or --force to replace it"]
    assert tree_snapshot(out) == before

    (out / "stale.txt").write_text("from the old run")
    assert cli("train", "standard", *CLI_FAST, "run.max_steps=2", "run.evaluate=false", "--force",
               "--out", str(out)) == 0
    assert not (out / "stale.txt").exists() and not (out / "eval.json").exists()
    assert [r["step"] for r in read_metrics(out) if r["kind"] == "step"] == [1, 2]


def test_cli_train_at_with_diagnostics_end_to_end(tmp_path: Path, cli, capsys) -> None:
    out = tmp_path / "at"
    assert cli("train", "at", *CLI_FAST, "diagnostics.every=2", "run.checkpoint_every_steps=1",
               "run.keep_checkpoints=2", "--out", str(out)) == 0
    assert f"run directory: {out}" in capsys.readouterr().out
    assert from_yaml((out / "config.yaml").read_text()).attack.steps == 2
    rows = read_metrics(out)
    steps = [r for r in rows if r["kind"] == "step"]
    assert len(steps) == 4 and set(steps[0]["parts"]) == {"ce_adv"}
    diagnostics = [r for r in rows if r["kind"] == "diagnostics"]
    assert [r["step"] for r in diagnostics] == [2, 4] and "diag/feature_drift" in diagnostics[0]
    epoch = next(r for r in rows if r["kind"] == "epoch")
    assert any(k.startswith("diag/bn_mean_var") for k in epoch["diagnostics"])
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000000003", "step-000000004"]
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["method"] == "at" and evaluation["clean_acc"] is not None


def test_default_run_name_is_path_safe() -> None:
    cfg = fast_config("at")
    cfg.data.name = "npz:/data/cifar10_subset.npz"
    cfg.model.name = "timm:resnet18"
    assert default_run_name(cfg) == "at-timm_resnet18-cifar10_subset-s0"


# --------------------------------------------------------------------------- resume


RESUME = ["data.train_subset=96", "optim.epochs=2", "run.checkpoint_every_steps=2", "run.keep_checkpoints=10",
          "run.deterministic=true", "run.evaluate=false", "averaging.swa=true", "averaging.swa_start_epoch=0",
          "averaging.swa_every_steps=1"]


def test_resume_is_bit_identical_and_falls_back_past_a_corrupted_checkpoint(tmp_path: Path, capsys) -> None:
    full = train(fast_config("at", *RESUME), out=tmp_path / "full")
    names = [p.name for p in list_checkpoints(full / "checkpoints")]
    # 3 steps per epoch, 2 epochs: every 2 steps (2, 4 mid-epoch, 6) and each epoch end (3, 6).
    assert names == ["step-000000002", "step-000000003", "step-000000004", "step-000000006"]
    assert load_checkpoint(full / "checkpoints" / "step-000000004").state["position"] == {
        "epoch": 1, "batch": 1, "global_step": 4}
    meta = json.loads((full / "model_meta.json").read_text())
    assert meta["weights"] == "swa"
    swa, last = load_file(full / "model.safetensors"), load_file(full / "model_last.safetensors")
    assert not torch.equal(swa["conv1.weight"], last["conv1.weight"])

    # A crash after the mid-epoch checkpoint of step 4: resume from it.
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    for name in ("step-000000006",):
        shutil.rmtree(crashed / "checkpoints" / name)
    for name in ("model.safetensors", "model_last.safetensors", "model_meta.json"):
        (crashed / name).unlink()
    capsys.readouterr()
    train(fast_config("at", *RESUME), out=crashed, resume=True)
    assert "resuming from" in capsys.readouterr().err
    for name in ("model.safetensors", "model_last.safetensors"):
        assert file_digest(crashed / name) == file_digest(full / name), name
    final_full = load_checkpoint(full / "checkpoints" / "step-000000006")
    final_resumed = load_checkpoint(crashed / "checkpoints" / "step-000000006")
    for stem in ("training", "average"):
        for key, value in final_full.tensors[stem].items():
            assert torch.equal(value, final_resumed.tensors[stem][key]), (stem, key)
    full_losses = [r["loss"] for r in read_metrics(full) if r["kind"] == "step"]
    assert [r["loss"] for r in read_metrics(crashed) if r["kind"] == "step"] == full_losses

    # The newest checkpoint (step 4) is corrupted: fall back to step 3 and say so.
    corrupted = tmp_path / "corrupted"
    shutil.copytree(crashed, corrupted)
    shutil.rmtree(corrupted / "checkpoints" / "step-000000006")
    blob = corrupted / "checkpoints" / "step-000000004" / "training.safetensors"
    blob.write_bytes(blob.read_bytes()[:-100])
    train(fast_config("at", *RESUME), out=corrupted, resume=True)
    err = capsys.readouterr().err
    assert f"skipping bad checkpoint: checkpoint file {blob} is truncated" in err
    assert "resuming from" in err and "step-000000003" in err
    assert file_digest(corrupted / "model.safetensors") == file_digest(full / "model.safetensors")
    events = [r["event"] for r in read_metrics(corrupted) if r["kind"] == "event"]
    assert "checkpoint_skipped" in events


def test_resume_refuses_a_changed_config(tmp_path: Path) -> None:
    out = train(fast_config("standard", "run.max_steps=1", "run.evaluate=false"), out=tmp_path / "r")
    before = tree_snapshot(out)
    with pytest.raises(ConfigError, match="optim.lr"):
        train(fast_config("standard", "optim.lr=0.05", "run.evaluate=false"), out=out, resume=True)
    assert tree_snapshot(out) == before


def test_resume_without_checkpoint_starts_from_scratch(tmp_path: Path) -> None:
    out = train(fast_config("standard", "run.max_steps=1", "run.evaluate=false"), out=tmp_path / "fresh",
                resume=True)
    assert (out / "model.safetensors").is_file()


def test_resume_clears_temporaries_left_by_a_killed_export(tmp_path: Path) -> None:
    out = train(fast_config("standard", "run.max_steps=1", "run.evaluate=false"), out=tmp_path / "r")
    stale = out / ".tmp-model.safetensors.4242"  # what a kill during the atomic export leaves
    stale.write_bytes(b"half a file")
    (out / "notes.txt").write_text("mine")
    train(fast_config("standard", "run.max_steps=1", "run.evaluate=false"), out=out, resume=True)
    assert not stale.exists()
    assert (out / "notes.txt").read_text() == "mine"  # only atzoo's own temporaries go


def test_force_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    (folder / "config.yaml").write_text("a: 1\n")  # a config alone does not make a run directory
    with pytest.raises(AtzooError, match="only replaces atzoo run directories"):
        train(fast_config("standard"), out=folder, force=True)
    assert (folder / "thesis.tex").read_text() == "precious"


# --------------------------------------------------------------------------- failures


@dataclass(frozen=True)
class _NanConfig(MethodConfig):
    name: str = "test_nan_on_third_step"


class _NanOnThirdStep(Method):
    """Clean CE whose third evaluation is NaN (a diverging run)."""

    config_class = _NanConfig

    def __init__(self, config: MethodConfig, run) -> None:
        super().__init__(config, run)
        self.calls = 0

    def compute_loss(self, model, modules, x, x_adv, y) -> LossOutput:
        self.calls += 1
        logits = model(x)
        loss = F.cross_entropy(logits, y) * (float("nan") if self.calls == 3 else 1.0)
        return LossOutput(parts={"ce_clean": loss}, logits=logits)


@pytest.fixture()
def nan_method():
    METHODS.add(_NanConfig.name, _NanOnThirdStep)
    yield _NanConfig.name
    METHODS._entries.pop(_NanConfig.name, None)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, cli, capsys, nan_method) -> None:
    out = tmp_path / "nan"
    code = cli("train", nan_method, *CLI_FAST, "run.checkpoint_every_steps=1", "--out", str(out))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("atzoo: error")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith("atzoo: error: non-finite training loss at epoch 0, step 3 (ce_clean=nan)")
    assert "step-000000002" in errors[0]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000000001", "step-000000002"]
    weights = load_checkpoint(out / "checkpoints" / "step-000000002").tensors["training"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert not (out / "model.safetensors").exists()


def test_config_conflicts_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="choose one"):
        train(fast_config("standard", "averaging.swa=true", "averaging.ema=true"), out=tmp_path / "a")
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbored'"):
        train(fast_config("standard", "run.trackers=[tensorbored]"), out=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_recipe_for_another_method_is_refused(tmp_path: Path, cli, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method:\n  name: standard\n")
    assert cli("train", "at", "--recipe", str(recipe), "--out", str(tmp_path / "x")) == 2
    assert "is for method 'standard', not 'at'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- options


def test_ema_exports_the_average_and_keeps_the_last_iterate(tmp_path: Path) -> None:
    out = train(fast_config("standard", "averaging.ema=true", "averaging.ema_decay=0.5", "run.evaluate=false"),
                out=tmp_path / "ema")
    assert json.loads((out / "model_meta.json").read_text())["weights"] == "ema"
    final = [r for r in read_metrics(out) if r["kind"] == "final"][0]
    assert final["weights"] == "ema" and final["n_averaged"] == 4
    ema, last = load_file(out / "model.safetensors"), load_file(out / "model_last.safetensors")
    average = load_checkpoint(list_checkpoints(out / "checkpoints")[-1]).tensors["average"]
    assert torch.equal(ema["fc.weight"], average["module.fc.weight"])
    assert not torch.equal(ema["fc.weight"], last["fc.weight"])


def test_gradient_accumulation_counts_optimizer_steps(tmp_path: Path) -> None:
    out = train(fast_config("standard", "optim.grad_accum=2", "run.evaluate=false"), out=tmp_path / "acc")
    steps = [r for r in read_metrics(out) if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2]  # 4 batches of 32, 2 per optimizer step
    assert load_checkpoint(list_checkpoints(out / "checkpoints")[-1]).state["position"]["global_step"] == 2


def test_bf16_and_channels_last_run_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from atzoo.methods.at import AT

    seen: list[tuple[torch.dtype, bool]] = []
    original = AT.compute_loss

    def recording(self, model, modules, x, x_adv, y):
        out = original(self, model, modules, x, x_adv, y)
        seen.append((out.logits.dtype, x_adv.is_contiguous(memory_format=torch.channels_last)))
        return out

    monkeypatch.setattr(AT, "compute_loss", recording)
    out = train(fast_config("at", "run.precision=bf16", "model.channels_last=true", "run.max_steps=2",
                            "run.evaluate=false"), out=tmp_path / "bf16")
    losses = [r["loss"] for r in read_metrics(out) if r["kind"] == "step"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert seen == [(torch.bfloat16, True)] * 2  # autocast forward, NHWC inputs


def test_bad_dataset_leaves_nothing_on_disk(tmp_path: Path, cli, capsys) -> None:
    out = tmp_path / "never"
    assert cli("train", "at", "--model", "small_cnn", "--dataset", f"npz:{tmp_path / 'missing.npz'}",
               "--out", str(out)) == 2
    assert capsys.readouterr().err.startswith("atzoo: error:")
    assert not out.exists()


def test_progress_bar_shows_loss_accuracy_lr_and_throughput() -> None:
    import io

    from rich.console import Console

    from atzoo.engine.progress import Reporter

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=160)
    with Reporter(enabled=True, total_steps=4, console=console) as reporter:
        reporter.advance_to(2, epoch=0, loss=1.2345, acc=0.5, lr=0.02, ips=321.0)
        reporter.message("resuming from somewhere")
    text = buffer.getvalue()
    assert "loss 1.2345" in text and "acc 0.500" in text and "lr 0.02" in text and "321 img/s" in text
    assert "2/4" in text and "resuming from somewhere" in text
    silent = io.StringIO()
    with Reporter(enabled=True, total_steps=4, console=Console(file=silent, force_terminal=False)) as reporter:
        reporter.advance_to(1, epoch=0, loss=1.0, acc=0.1, lr=0.1, ips=1.0)
    assert "img/s" not in silent.getvalue()  # no bar when not a terminal


def test_progress_bar_numbers_the_epoch_as_the_epoch_lines_do() -> None:
    """0-based epoch 6 of 60 is the line's ``epoch 7/60``; the bar must say the same (it said 6)."""
    import io

    from rich.console import Console

    from atzoo.engine.progress import Reporter

    buffer = io.StringIO()
    with Reporter(enabled=True, total_steps=660, epochs=60,
                  console=Console(file=buffer, force_terminal=True, width=200)) as reporter:
        reporter.advance_to(77, epoch=6, loss=1.0, acc=0.5, lr=0.1, ips=10.0)
    text = buffer.getvalue()
    assert "epoch 7/60" in text and "epoch 6" not in text and "step" in text and "77/660" in text


# --------------------------------------------------------------------------- issue 26: trackers

FAKE_WANDB = '''
"""A stand-in for wandb with the calls Accelerate's WandBTracker makes; records them."""
import json, os
_LOG = os.environ["FAKE_WANDB_LOG"]
def _record(**row):
    with open(_LOG, "a") as f:
        f.write(json.dumps(row) + "\\n")
class _Config:
    def update(self, values, allow_val_change=False):
        _record(call="config", values=values)
config = _Config()
class _Run:
    def log(self, values, step=None, **kwargs):
        _record(call="log", values=values, step=step)
    def finish(self):
        _record(call="finish")
def init(project=None, **kwargs):
    _record(call="init", project=project, **kwargs)
    return _Run()
'''


@pytest.fixture
def fake_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable ``wandb`` (module + dist-info, as Accelerate checks both) that records
    every call to a JSON-lines file; the real one need not be installed."""
    site = tmp_path / "site"
    (site / "wandb").mkdir(parents=True)
    (site / "wandb" / "__init__.py").write_text(FAKE_WANDB)
    (site / "wandb-0.0.0.dist-info").mkdir()
    (site / "wandb-0.0.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: wandb\nVersion: 0.0.0\n")
    log = tmp_path / "wandb_calls.jsonl"
    monkeypatch.setenv("FAKE_WANDB_LOG", str(log))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(__import__("sys").modules, "wandb", raising=False)
    import accelerate.tracking as tracking  # its list of installed trackers is made at import

    monkeypatch.setattr(tracking, "_available_trackers", [*tracking._available_trackers, tracking.LoggerType.WANDB])
    return log


def test_wandb_gets_the_project_the_run_name_the_config_and_the_final_numbers(
        tmp_path: Path, cli, fake_wandb: Path) -> None:
    """``run.trackers=[wandb] run.project=P``: the wandb run is in project P, named after the
    run directory, with the config at the start and eval.json's final numbers at the end."""
    out = tmp_path / "tracked"
    assert cli("train", "standard", *CLI_FAST, "run.trackers=[wandb]", "run.project=P", "--out", str(out)) == 0
    calls = [json.loads(line) for line in fake_wandb.read_text().splitlines()]
    init = [c for c in calls if c["call"] == "init"]
    assert len(init) == 1 and init[0]["project"] == "P" and init[0]["name"] == "tracked"
    config = [c["values"] for c in calls if c["call"] == "config"]
    assert len(config) == 1 and config[0]["method.name"] == "standard" and config[0]["run.project"] == "P"
    final = [c for c in calls if c["call"] == "log" and "final/clean_acc" in c["values"]]
    evaluation = json.loads((out / "eval.json").read_text())
    assert len(final) == 1 and final[0]["values"] == {"final/clean_acc": evaluation["clean_acc"],
                                                      "final/pgd20_acc": evaluation["pgd20_acc"]}
    assert final[0]["step"] == 4 and calls[-1]["call"] == "finish"


def test_tracker_project_defaults_to_wandb_project_then_the_run_family(monkeypatch: pytest.MonkeyPatch) -> None:
    from atzoo.engine.trackers import tracker_project

    cfg = build_config(None, [], method={"name": "at"})
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    assert tracker_project(cfg, Path("runs/at-small_cnn-digits-s3")) == "at-small_cnn-digits"  # the seeds share it
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    assert tracker_project(cfg, Path("runs/at-small_cnn-digits-s3")) == "from-env"
    cfg.run.project = "given"
    assert tracker_project(cfg, Path("runs/x")) == "given"


def test_tensorboard_keeps_one_folder_over_start_and_resume_with_config_and_final_numbers(
        tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorBoard: no timestamped hparams sub-folder at the start or at a resume (TensorBoard
    would list each as a run); the config as text and the final accuracies in the run's folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from atzoo.engine.checkpoint import CRASH_ENV

    out = tmp_path / "tb"
    args = ["train", "standard", *CLI_FAST, "run.trackers=[tensorboard]", "--out", str(out)]
    monkeypatch.setenv(CRASH_ENV, "step:2:SIGTERM")  # a scheduler's SIGTERM during step 2
    assert cli(*args) == 143
    monkeypatch.delenv(CRASH_ENV)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000000002"]
    assert cli(*args, "--resume") == 0  # from step 2 to the end
    board = out / "tensorboard"
    assert [p for p in board.iterdir() if p.is_dir()] == [], "a sub-folder TensorBoard shows as another run"
    events = EventAccumulator(str(board), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    evaluation = json.loads((out / "eval.json").read_text())
    final = events.Scalars("final/clean_acc")
    assert len(final) == 1 and final[0].value == pytest.approx(evaluation["clean_acc"]) and final[0].step == 4
    assert events.Scalars("final/pgd20_acc")[0].value == pytest.approx(evaluation["pgd20_acc"])
    assert "config/text_summary" in events.Tags()["tensors"]
    assert len(events.Tensors("config/text_summary")) == 1  # written at the start only, not again at the resume
