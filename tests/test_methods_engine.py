"""standard, AT, TRADES, MART, LBGAT, ARREST: two real training steps each through ``atzoo.engine.train``.

Digits data, the small CNN, 2-step attacks, no evaluation: each run must write its run
directory, log the method's named loss parts, and export the student alone. LBGAT's
teacher must be trained by the same optimiser and saved in the checkpoint; ARREST must
train or load its standard model and keep the frozen copy unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from atzoo.config import RunConfig, build_config
from atzoo.engine import train
from atzoo.engine.checkpoint import find_resume_checkpoint
from atzoo.engine.rundir import read_metrics
from atzoo.errors import ConfigError
from atzoo.models import create_model

PARTS = {
    "standard": {"ce_clean"},
    "at": {"ce_adv"},
    "trades": {"ce_clean", "kl"},
    "mart": {"bce_adv", "robust_kl"},
    "lbgat": {"mse", "ce_teacher", "kl"},
    "arrest": {"ce_adv", "rep"},
}
EXTRA = {"lbgat": {"teacher": "small_cnn", "beta": 6.0}, "arrest": {"pretrain_epochs": 1}}


def tiny_config(method: str, out: Path, **fields: object) -> RunConfig:
    return build_config(
        method={"name": method, **EXTRA.get(method, {}), **fields},
        data={"name": "digits", "batch_size": 16},
        model={"name": "small_cnn"},
        attack={"steps": 2},
        run={"max_steps": 2, "evaluate": False, "trackers": [], "log_every": 1, "out": str(out)},
    )


def checkpoint_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    point = find_resume_checkpoint(run_dir / "checkpoints")
    assert point is not None
    return point.data.tensors["training"]


@pytest.mark.parametrize("name", list(PARTS))
def test_two_training_steps_write_a_run_directory(name: str, tmp_path: Path) -> None:
    run_dir = train(tiny_config(name, tmp_path / name))
    for item in ("config.yaml", "metrics.jsonl", "model.safetensors", "model_meta.json", "checkpoints"):
        assert (run_dir / item).exists(), item
    steps = [row for row in read_metrics(run_dir) if row["kind"] == "step"]
    assert [row["step"] for row in steps] == [1, 2]
    for row in steps:
        assert set(row["parts"]) == PARTS[name]
        assert all(math.isfinite(v) for v in row["parts"].values())
    # the exported model is the plain student: no teacher, no reference network
    exported = load_file(str(run_dir / "model.safetensors"))
    assert set(exported) == set(create_model("small_cnn", 10, 1).state_dict())


def test_lbgat_teacher_is_trained_jointly_and_checkpointed(tmp_path: Path) -> None:
    torch.manual_seed(1)
    initial = create_model("small_cnn", 10, 1).state_dict()
    save_file(initial, str(tmp_path / "teacher.safetensors"))
    run_dir = train(tiny_config("lbgat", tmp_path / "run", teacher_checkpoint=str(tmp_path / "teacher.safetensors")))
    tensors = checkpoint_tensors(run_dir)
    teacher = {k.removeprefix("method_modules.teacher."): v for k, v in tensors.items()
               if k.startswith("method_modules.teacher.")}
    assert set(teacher) == set(initial)
    # two SGD steps moved every teacher weight away from the checkpoint it started from
    assert not torch.equal(teacher["conv1.weight"], initial["conv1.weight"])
    assert not torch.equal(teacher["fc.weight"], initial["fc.weight"])
    # and its BatchNorm ran in train mode (running statistics updated)
    assert int(teacher["bn1.num_batches_tracked"]) > 0


def test_arrest_trains_phi_first_and_keeps_its_copy_frozen(tmp_path: Path) -> None:
    run_dir = train(tiny_config("arrest", tmp_path / "run"))
    phi_dir = tmp_path / "run-pretrain"  # a sibling standard run, kept when the ARREST run is replaced
    assert (phi_dir / "model.safetensors").is_file()
    assert read_metrics(phi_dir)[-1]["kind"] == "final"
    phi = load_file(str(phi_dir / "model.safetensors"))
    tensors = checkpoint_tensors(run_dir)
    reference = {k.removeprefix("method_modules.reference.net."): v for k, v in tensors.items()
                 if k.startswith("method_modules.reference.net.")}
    assert set(reference) == set(phi)
    assert all(torch.equal(reference[k], phi[k]) for k in phi)  # no update, not even BN statistics
    tuned = load_file(str(run_dir / "model.safetensors"))
    assert not torch.equal(tuned["conv1.weight"], phi["conv1.weight"])  # the tuned copy moved

    # replacing the ARREST run reuses phi instead of training it again
    phi_log = (phi_dir / "metrics.jsonl").read_text()
    train(tiny_config("arrest", tmp_path / "run"), force=True)
    assert (phi_dir / "metrics.jsonl").read_text() == phi_log
    # a phi trained with other settings is never reused silently, and is left untouched
    with pytest.raises(ConfigError, match=r"run-pretrain holds a standard model trained with other settings"):
        train(tiny_config("arrest", tmp_path / "run", pretrain_epochs=3), force=True)
    assert (phi_dir / "metrics.jsonl").read_text() == phi_log

    # a second ARREST run fine-tunes the same phi given as a run directory, training nothing first
    again = train(tiny_config("arrest", tmp_path / "again", pretrained=str(phi_dir), pretrain_epochs=0))
    assert not (tmp_path / "again-pretrain").exists()
    reference = checkpoint_tensors(again)
    assert torch.equal(reference["method_modules.reference.net.fc.weight"], phi["fc.weight"])
