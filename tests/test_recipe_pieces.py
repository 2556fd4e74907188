"""The recipe of the generated-data papers: scheduled EMA, label smoothing, the recipe cards."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atzoo.config import AveragingConfig, build_config
from atzoo.engine.averaging import WeightAverage, averaging_kind
from atzoo.errors import ConfigError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_scheduled_ema_follows_the_reference_update() -> None:
    """Warm-up copies, then decay min(tau, (1 + t) / (10 + t)); BN statistics copied
    (ema_update / update_bn of github.com/wzekai99/DM-Improves-AT, gowal21uncovering/utils/watrain.py)."""
    cfg = AveragingConfig(ema=True, ema_decay=0.995, ema_warmup=0.025, ema_dynamic=True, ema_buffers="copy")
    model = _net()
    average = WeightAverage(model, cfg, total_steps=200)  # warm-up: 0.025 * 200 = 5 steps
    assert average.warmup_steps == 5.0
    assert [average.ema_decay(t) for t in (1, 4, 5, 6, 10_000)] == [0.0, 0.0, 0.1, 2 / 11, 0.995]
    expected = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(1)
    for step in range(1, 13):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
            model[1].running_mean.copy_(torch.randn(3, generator=generator))
        average.maybe_update(model, epoch=0, global_step=step)
        since = step - 5
        decay = 0.0 if step < 5 else min(0.995, (1 + since) / (10 + since))
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
        for mine, want in zip(average.module().parameters(), expected):
            torch.testing.assert_close(mine, want, rtol=1e-6, atol=1e-6)
        assert torch.equal(average.module()[1].running_mean, model[1].running_mean)


def test_plain_ema_is_unchanged_and_bad_settings_are_refused() -> None:
    cfg = AveragingConfig(ema=True, ema_decay=0.9)
    model = _net()
    average = WeightAverage(model, cfg, total_steps=10)
    first = [p.detach().clone() for p in model.parameters()]
    average.maybe_update(model, 0, 1)  # the first update copies
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.maybe_update(model, 0, 2)
    for mine, old in zip(average.module().parameters(), first):
        torch.testing.assert_close(mine, 0.9 * old + 0.1 * (old + 1.0))
    for bad in (AveragingConfig(ema=True, ema_warmup=1.0), AveragingConfig(ema=True, ema_decay=1.5)):
        with pytest.raises(ConfigError, match="averaging.ema"):
            averaging_kind(bad)


def test_label_smoothing_smooths_the_clean_ce_only() -> None:
    """Wang et al. 2023's SmoothCrossEntropyLoss: (1 - s) * NLL + s * mean_k(-log p_k)."""
    from atzoo.methods.trades import trades_loss

    torch.manual_seed(0)
    clean, adv, y = torch.randn(5, 10), torch.randn(5, 10), torch.randint(0, 10, (5,))
    log_p = F.log_softmax(clean, dim=1)
    by_hand = (0.9 * -log_p.gather(1, y[:, None]).squeeze(1) + 0.1 * -log_p.mean(dim=1)).mean()
    smoothed, plain = trades_loss(clean, adv, y, 5.0, label_smoothing=0.1), trades_loss(clean, adv, y, 5.0)
    torch.testing.assert_close(smoothed["ce_clean"], by_hand)
    torch.testing.assert_close(smoothed["kl"], plain["kl"])
    assert not torch.allclose(smoothed["ce_clean"], plain["ce_clean"])


def test_label_smoothing_reaches_the_method_or_is_refused() -> None:
    from atzoo.methods.base import create_method

    cfg = build_config(None, ["optim.label_smoothing=0.1"], method={"name": "trades"}, data={"name": "digits"})
    assert create_method("trades", cfg).ctx.label_smoothing == 0.1
    mart = build_config(None, ["optim.label_smoothing=0.1"], method={"name": "mart"}, data={"name": "digits"})
    with pytest.raises(ConfigError, match="does not take optim.label_smoothing.*trades"):
        create_method("mart", mart)


def test_recipe_cards_show_in_atzoo_docs_and_match_their_recipes(cli, capsys) -> None:
    from atzoo.report.cards import load_recipe_card, recipe_card_names
    from atzoo.config.resources import recipes_dir

    assert {"wang2023_trades_generated", "carmon2019_rst"} <= set(recipe_card_names())
    for name in recipe_card_names():
        card = load_recipe_card(name)
        cfg = build_config(recipes_dir() / card.meta["recipes"])
        assert cfg.method.name == card.meta["method"] and cfg.data.extra is not None
        assert {k: getattr(cfg.method, k) for k in card.defaults} == card.defaults
    assert cli("docs", "wang2023_trades_generated") == 0
    out = " ".join(capsys.readouterr().out.split())
    for words in ("92.44", "67.31", "93.25", "70.69", "Wang2023Better_WRN-28-10", "method trades",
                  "data.extra_fraction 0.7"):
        assert words in out, words
    assert cli("docs") == 0
    assert "wang2023_trades_generated" in capsys.readouterr().out
