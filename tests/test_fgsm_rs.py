"""FGSM-RS (Wong et al., ICLR 2020): the paper's setting, the step from a uniform start
projected onto the eps-ball, single-step only; and a short one-cycle run is not refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from atzoo.config import build_config
from atzoo.errors import ConfigError
from atzoo.methods import create_method

EPS = 8 / 255


def test_paper_setting_and_the_projected_step() -> None:
    cfg = build_config(None, [], method={"name": "fgsm_rs"})
    assert cfg.attack.step_size == pytest.approx(10 / 255) and cfg.attack.steps == 1
    assert cfg.attack.random_start == "uniform" and cfg.attack.bn_mode == "train"
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.optim.schedule, cfg.optim.weight_decay) == (15, 0.2, "onecycle", 5e-4)
    method = create_method("fgsm_rs", cfg)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(64, 1, 4, 4) * 0.6 + 0.2, torch.randint(0, 3, (64,))
    delta = method.attack(net, nn.ModuleDict(), x, y) - x
    assert delta.abs().max() <= EPS + 1e-6  # projected
    # A 1.25 eps step from anywhere in the ball ends on the boundary for most coordinates.
    assert (delta.abs() > EPS - 1e-6).float().mean() > 0.5
    with pytest.raises(ConfigError, match="single-step"):
        create_method("fgsm_rs", build_config(None, ["attack.steps=10"], method={"name": "fgsm_rs"}))


def test_short_onecycle_run_is_built_with_its_real_steps_not_refused(tmp_path) -> None:
    """The preflight used to build the schedule with one step per epoch, so every one-cycle run
    under 7 epochs was refused with an error blaming SGD's momentum."""
    from atzoo.engine import read_metrics, train
    from atzoo.engine.preflight import check_settings

    cfg = build_config(None, ["optim.epochs=3", "optim.schedule=onecycle", "data.train_subset=64",
                              "data.batch_size=16", "run.evaluate=false", "run.trackers=[]", "attack.steps=1",
                              "eval.co_check=off"],
                       method={"name": "at"}, model={"name": "small_cnn"}, data={"name": "digits"})
    check_settings(cfg)  # no error
    run = train(cfg, out=tmp_path / "run")
    epochs = [r for r in read_metrics(run) if r["kind"] == "epoch"]
    assert len(epochs) == 3 and epochs[-1]["lr"] < epochs[0]["lr"]
