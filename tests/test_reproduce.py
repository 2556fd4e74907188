"""``atzoo reproduce``: table manifests, plans, job files, scaling, verdicts and a tiny end-to-end run."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from atzoo.report.cards import load_cards
from atzoo.errors import ConfigError
from atzoo.reproduce import load_tables, prepare, run_missing
from atzoo.reproduce.manifest import METRICS, load_table, parse_claim, parse_table
from atzoo.reproduce.scale import get_scale, scale_overrides
from atzoo.reproduce.runner import build_run_config, find_recipe

CARD_METRICS = ("clean", "pgd20", "autoattack")


def _card_result(name: str, setting: str, label: str | None):
    card = load_cards()[name]
    for result in card.paper_results():
        if result.setting == setting and result.label == (label or card.title):
            return result
    raise AssertionError(f"card {name} has no row {label or card.title} for {setting}")


# --------------------------------------------------------------------------- manifests


def test_every_packaged_table_loads_and_its_recipes_build() -> None:
    tables = load_tables()
    assert {t.name for t in tables} >= {"ar-at-table3", "ar-at-table4", "ar-at-ablation", "ar-at-table14-l2",
                                        "ar-at-table19-cost", "ar-at-asym-trades", "arrest-headline"}
    for table in tables:
        for row in table.rows:
            cfg = build_run_config(find_recipe(row.recipe), row.method, list(row.overrides))
            assert cfg.method.name == row.method, row.id


def test_table3_is_seven_methods_by_four_settings_with_five_seeds() -> None:
    table = load_table("ar-at-table3")
    rows = table.select()
    assert len(rows) == 28 and {len(r.seeds) for r in rows} == {5}
    assert len({r.key for r in rows}) == 7 and len({r.setting for r in rows}) == 4
    # The paper's five-run footnote covers LBGAT and AR-AT only (the specification).
    assert {r.key for r in rows if r.paper_runs == 5} == {"lbgat0", "arat"}
    assert table.row("cifar100-resnet18/arrest").paper == {}


def test_manifests_and_cards_agree() -> None:
    """A number that is in a card and a manifest is the same number in both."""
    checked = 0
    for table in load_tables():
        for row in table.rows:
            if row.card is None:
                continue
            result = _card_result(row.card["name"], row.setting, row.card.get("label"))
            for metric in CARD_METRICS:
                if metric in row.paper:
                    assert getattr(result, metric) == pytest.approx(row.paper[metric]), (table.name, row.id, metric)
                    checked += 1
            if "cost_vs_at" in row.paper:
                cost = load_cards()[row.card["name"]].meta["reported_cost"][row.setting]
                assert cost["relative_to_at"] == pytest.approx(row.paper["cost_vs_at"])
                assert cost["seconds_per_batch"] == pytest.approx(row.paper["seconds_per_batch"])
                checked += 1
    assert checked > 60


def test_every_card_number_is_in_some_manifest() -> None:
    rows = [(r.setting, r.paper) for t in load_tables() for r in t.rows]
    for card in load_cards().values():
        for result in card.paper_results():
            wanted = {m: getattr(result, m) for m in CARD_METRICS if getattr(result, m) is not None}
            assert any(setting == result.setting and all(paper.get(m) == pytest.approx(v) for m, v in wanted.items())
                       for setting, paper in rows), (card.name, result.label, result.setting)


def test_every_ordering_holds_on_the_papers_own_numbers() -> None:
    checked = 0
    for table in load_tables():
        for setting in table.settings:
            rows = {r.key: r.paper for r in table.rows if r.setting == setting}
            for claim in table.orderings:
                left = rows.get(claim.a, {}).get(claim.metric)
                right = rows.get(claim.b, {}).get(claim.metric) if claim.b else 0.0
                if left is None or right is None:
                    continue
                assert claim.holds(left, right if claim.b else None), (table.name, setting, claim.text)
                checked += 1
    assert checked >= 30


def test_claim_grammar() -> None:
    claim = parse_claim("autoattack: arat >= at - 2")
    assert (claim.metric, claim.a, claim.op, claim.b, claim.offset) == ("autoattack", "arat", ">=", "at", -2.0)
    assert claim.holds(41.0, 42.5) and not claim.holds(40.0, 42.5)
    number = parse_claim("autoattack: standard < 5")
    assert number.b is None and number.holds(4.9, None) and not number.holds(5.0, None)
    with pytest.raises(ConfigError, match="must look like"):
        parse_claim("arat is better than at")
    with pytest.raises(ConfigError, match="names metric 'accuracy'"):
        parse_claim("accuracy: arat > at")


@pytest.mark.parametrize("change, message", [
    ({"rows": [{"id": "x", "method": "at", "recipe": "r.yaml"}]}, "must be <setting>/<key>"),
    ({"orderings": ["clean: arat > nobody"]}, "names 'nobody'"),
    ({"metrics": ["accuracy"]}, "metric 'accuracy' unknown"),
    ({"seeds": [-1]}, "'seeds' must be a non-empty list"),
])
def test_malformed_manifest_is_a_one_line_config_error(change: dict, message: str) -> None:
    base = {"name": "t", "metrics": ["clean"], "seeds": [0], "orderings": [],
            "rows": [{"id": "cifar10-resnet18/arat", "method": "arat", "recipe": "arat_cifar10_resnet18.yaml"}]}
    with pytest.raises(ConfigError, match=message):
        parse_table({**base, **change}, "t.yaml")


# --------------------------------------------------------------------------- scaling


def test_scale_shrinks_every_schedule_in_proportion() -> None:
    """AR-AT+SWA at cpu-small (3 of 100 epochs): milestones 75, 90 -> 2 (3 is the end), warm-up 1 -> 0,
    SWA from epoch 49 -> 1, every 500 of 100 x 1562 steps -> every 500 * 24 / 156,200 -> 1 step."""
    scale = get_scale("cpu-small")
    recipe = find_recipe("arat_swa_cifar10_resnet18.yaml")
    cfg = build_run_config(recipe, "arat", ["averaging.swa_start_epoch=49", "model.name=small_cnn",
                                            "data.batch_size=32", "method.layers=null"])
    overrides = scale_overrides(cfg, scale)
    assert "optim.epochs=3" in overrides and "optim.milestones=[2]" in overrides
    assert "optim.warmup_epochs=0" in overrides
    assert "averaging.swa_start_epoch=1" in overrides and "averaging.swa_every_steps=1" in overrides
    assert "data.train_subset=256" in overrides and "eval.n_ex=50" in overrides


def test_scaled_plan_replaces_model_tied_settings_and_the_dataset(tmp_path: Path) -> None:
    session = prepare("ar-at-ablation", rows=["none"], seeds=[0], scale="cpu-small",
                      data={"cifar10": "npz:data.npz"}, out=tmp_path)
    cfg = session.planned[0].config
    assert cfg.model.name == "small_cnn" and cfg.method.layers is None and cfg.data.name == "npz:data.npz"
    assert cfg.optim.epochs == 3 and cfg.diagnostics.every >= 1
    lbgat = prepare("ar-at-table3", rows=["cifar10-resnet18/lbgat0"], seeds=[0], scale="cpu-small", out=tmp_path)
    assert lbgat.planned[0].config.method.teacher == "small_cnn"


# --------------------------------------------------------------------------- CLI: list, plan, jobs


def test_list_names_every_table(cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("reproduce", "--list") == 0
    out = capsys.readouterr().out
    for name in ("ar-at-table3", "ar-at-ablation", "ar-at-table19-cost", "cpu-small"):
        assert name in out


def test_plan_prints_runs_and_gpu_hours_and_writes_nothing(cli, capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "repro"
    assert cli("reproduce", "ar-at-table3", "--plan", "--out", str(out_dir)) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "140 runs = 5 seeds x 7 methods x 4 settings" in out
    assert "mean ± std of 5 runs only for arat, lbgat0" in out
    assert "GPU-hours" in out and not out_dir.exists()


def test_gpu_hours_follow_the_paper_timing(tmp_path: Path) -> None:
    """AT, CIFAR-10 ResNet-18: the recipe's epochs x 390 batches x 0.122 s on one A100 (150 epochs: 7137 s)."""
    from atzoo.reproduce.cost import estimate_runs

    session = prepare("ar-at-table3", rows=["cifar10-resnet18/at", "cifar10-wrn34_10/at"], seeds=[0], out=tmp_path)
    r18, wrn = estimate_runs(session.planned)
    epochs = [p.config.optim.epochs for p in session.planned]
    assert r18.seconds == pytest.approx(epochs[0] * 390 * 0.122) and r18.basis == "paper"
    assert wrn.seconds == pytest.approx(12.0 * epochs[1] * 390 * 0.122)


def test_emit_jobs_writes_one_runnable_line_per_run(cli, capsys, tmp_path: Path) -> None:
    from atzoo.commands.train import make_config

    jobs = tmp_path / "jobs.txt"
    assert cli("reproduce", "ar-at-table3", "--emit-jobs", str(jobs), "--launcher", "accelerate",
               "--out", str(tmp_path / "runs")) == 0
    lines = jobs.read_text().splitlines()
    assert len(lines) == 140
    session = prepare("ar-at-table3", out=tmp_path / "runs")
    for line, planned in zip(lines, session.planned):
        guard, _, command = line.partition(" || ")
        assert guard == shlex.join(["test", "-f", str(planned.run_dir / "eval.json")])
        argv = shlex.split(command)
        assert argv[:4] == ["accelerate", "launch", "-m", "atzoo"] and argv[4] == "train"
        recipe, out = argv[argv.index("--recipe") + 1], argv[argv.index("--out") + 1]
        assert "/" not in recipe and not recipe.endswith(".yaml")  # by name: runs on any machine
        overrides = argv[argv.index("--resume") + 1:]
        cfg = make_config(argv[5], recipe=Path(recipe), overrides=overrides)
        assert cfg == planned.config and out == str(planned.run_dir)
    assert "--collect" in capsys.readouterr().out


@pytest.mark.parametrize("args, pattern", [
    (["no-such-table"], "unknown table 'no-such-table'; valid: ar-at-ablation"),
    (["ar-at-table3", "--scale", "huge"], "unknown --scale 'huge'; valid: tiny, cpu-small"),
    (["ar-at-table3", "--rows", "nothing*"], "--rows 'nothing\\*' matches no row"),
    (["ar-at-table3", "--seeds", "a,b"], "--seeds 'a,b' must be non-negative integers"),
    (["ar-at-table3", "--data", "cifar10"], "--data 'cifar10' must look like"),
    (["ar-at-table3", "--plan", "--collect"], "separate actions"),
])
def test_bad_input_is_one_line_and_exit_2(cli, capsys, tmp_path: Path, args: list[str], pattern: str) -> None:
    assert cli("reproduce", *args, "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("atzoo: error: ")
    import re

    assert re.search(pattern, err), err
    assert not (tmp_path / "o").exists()


def test_a_folder_holding_another_configuration_is_refused(cli, capsys, tmp_path: Path) -> None:
    session = prepare("ar-at-table3", rows=["cifar10-resnet18/at"], seeds=[0], scale="tiny", out=tmp_path)
    run_dir = session.planned[0].run_dir
    run_dir.mkdir(parents=True)
    other = build_run_config(find_recipe("at_cifar10_resnet18.yaml"), "at", ["optim.epochs=2"])
    from atzoo.config import to_yaml

    (run_dir / "config.yaml").write_text(to_yaml(other))
    (run_dir / "eval.json").write_text("{}")
    before = sorted(p.name for p in run_dir.iterdir())
    code = cli("reproduce", "ar-at-table3", "--rows", "cifar10-resnet18/at", "--seeds", "0", "--scale", "tiny",
               "--out", str(tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and "holds a run with another configuration" in err
    assert sorted(p.name for p in run_dir.iterdir()) == before


# --------------------------------------------------------------------------- end to end on digits


@pytest.mark.slow
def test_tiny_scaled_table_runs_reuses_finished_runs_and_resumes(monkeypatch, cli, capsys, tmp_path: Path) -> None:
    import atzoo.reproduce as reproduce

    trained: list[tuple[str, int, bool]] = []
    real = reproduce.train_run

    def counting(planned, *, resume: bool):
        trained.append((planned.row.id, planned.seed, resume))
        return real(planned, resume=resume)

    monkeypatch.setattr(reproduce, "train_run", counting)
    args = ["reproduce", "ar-at-table3", "--rows", "cifar10-resnet18/at,cifar10-resnet18/arat", "--seeds", "0",
            "--scale", "tiny", "--out", str(tmp_path)]
    assert cli(*args) == 0
    assert [(i, r) for i, _, r in trained] == [("cifar10-resnet18/at", False), ("cifar10-resnet18/arat", False)]
    report = json.loads((tmp_path / "reproduction.json").read_text())
    assert report["scale"]["name"] == "tiny" and "SCALED" in report["banner"]
    assert [r["seeds_finished"] for r in report["rows"]] == [1, 1]
    assert {r["verdict"] for r in report["rows"]} == {"scaled: see orderings"}
    claim = next(c for c in report["orderings"] if c["claim"] == "clean: arat > at")
    at, arat = (r["measured"]["clean"]["mean"] for r in report["rows"])
    assert claim["measured"] is (arat > at) and claim["paper"] is True
    for name in ("reproduction.md", "reproduction.html", "tradeoff.png"):
        assert (tmp_path / name).is_file()
    assert "SCALED" in (tmp_path / "reproduction.md").read_text()
    at_eval = tmp_path / "cifar10-resnet18" / "at" / "s0" / "eval.json"
    stamp = at_eval.stat().st_mtime_ns

    # Rerun: both runs finished, nothing trains, nothing is rewritten.
    trained.clear()
    assert cli(*args) == 0
    assert trained == [] and at_eval.stat().st_mtime_ns == stamp
    assert "2 reused, 0 resumed, 0 trained" in capsys.readouterr().out

    # An interrupted run (no eval.json yet) is resumed, the finished one reused.
    (tmp_path / "cifar10-resnet18" / "arat" / "s0" / "eval.json").unlink()
    assert cli(*args) == 0
    assert trained == [("cifar10-resnet18/arat", 0, True)] and at_eval.stat().st_mtime_ns == stamp
    assert (tmp_path / "cifar10-resnet18" / "arat" / "s0" / "eval.json").is_file()


def test_metrics_constant_covers_manifest_metrics() -> None:
    used = {m for t in load_tables() for r in t.rows for m in r.paper}
    assert used <= set(METRICS)


def _fake_finished_run(planned, clean: float, autoattack: float, *, older: bool = False) -> None:
    """A run directory as the engine leaves it, with the given accuracies (no training).

    ``older``: its config.yaml lacks a key (``optim.nesterov``), as a run made before the key existed.
    """
    import yaml

    from atzoo.config import config_to_dict

    cfg = planned.config
    values = config_to_dict(cfg)
    if older:
        del values["optim"]["nesterov"]
    planned.run_dir.mkdir(parents=True)
    (planned.run_dir / "config.yaml").write_text(yaml.safe_dump(values))
    (planned.run_dir / "metrics.jsonl").write_text("")
    payload = {"method": cfg.method.name, "model": cfg.model.name, "dataset": cfg.data.name, "norm": "linf",
               "eps": 8 / 255, "clean_acc": clean, "pgd20_acc": autoattack + 3.0, "autoattack_acc": autoattack,
               "n_examples": 10000, "aa_n_examples": 10000}
    (planned.run_dir / "eval.json").write_text(json.dumps(payload))


def test_collect_gives_mean_std_difference_and_verdict_per_row(cli, capsys, tmp_path: Path) -> None:
    """AT seeds 83.0/84.0 clean, 42.0/43.0 AA vs paper 83.77/42.42: means 83.5 and 42.5, diffs -0.27 and
    +0.08, both within 1 point. AR-AT one seed 85.0 vs 87.82: -2.82, outside. TRADES: not run yet."""
    rows = ["cifar10-resnet18/at", "cifar10-resnet18/arat", "cifar10-resnet18/trades"]
    session = prepare("ar-at-table3", rows=rows, seeds=[0, 1], out=tmp_path)
    runs = {(p.row.key, p.seed): p for p in session.planned}
    _fake_finished_run(runs["at", 0], 83.0, 42.0)
    _fake_finished_run(runs["at", 1], 84.0, 43.0, older=True)
    _fake_finished_run(runs["arat", 0], 85.0, 49.0)
    assert cli("reproduce", "ar-at-table3", "--rows", ",".join(rows), "--seeds", "0,1", "--out", str(tmp_path),
               "--collect") == 0
    report = json.loads((tmp_path / "reproduction.json").read_text())
    by_key = {r["id"].split("/")[1]: r for r in report["rows"]}
    at, arat, trades = by_key["at"], by_key["arat"], by_key["trades"]
    assert at["measured"]["clean"]["mean"] == pytest.approx(83.5)
    assert at["measured"]["clean"]["std"] == pytest.approx(0.70710678)
    assert at["difference"]["clean"] == pytest.approx(-0.27) and at["difference"]["autoattack"] == pytest.approx(0.08)
    assert at["verdict"] == "within tolerance"
    assert arat["verdict"] == "outside tolerance" and arat["outside"] == ["clean"]
    assert arat["difference"]["clean"] == pytest.approx(-2.82) and arat["seeds_finished"] == 1
    assert trades["verdict"] == "not run yet" and trades["seeds_finished"] == 0
    claim = next(c for c in report["orderings"] if c["claim"] == "clean: arat > at")
    assert claim["measured"] is True and claim["measured_gap"] == pytest.approx(1.5)
    # Standard error of the gap from 10,000 test images: sqrt(.85 .15 / 1e4) and sqrt(.835 .165 / 1e4) / sqrt(2).
    se = (0.85 * 0.15 / 1e4 + 0.835 * 0.165 / 1e4 / 2) ** 0.5 * 100
    assert claim["sampling_se"] == pytest.approx(se) and claim["outcome"] == "held"
    assert claim["paper_gap"] == pytest.approx(87.82 - 83.77)
    assert report["scale"] is None and report["banner"].startswith("Full-size")
    md = (tmp_path / "reproduction.md").read_text()
    assert "| cifar10-resnet18/at | AT | 2/2 | 83.77 | 83.50 ± 0.71 | -0.27 |" in md
    # Both AT seeds form one leaderboard entry although one config.yaml predates a key.
    (group,) = report["leaderboard"]["groups"]
    assert [r["seeds"] for r in group["rows"] if r["label"] == "AT"] == [2]


def test_five_run_footnote_matches_the_cards() -> None:
    """Table 3's mean-of-five-runs footnote covers LBGAT and AR-AT only, in the manifest and in the cards."""
    cards = load_cards()
    for row in load_table("ar-at-table3").rows:
        if row.card is None or row.card.get("label"):
            continue
        source = cards[row.card["name"]].meta["reported_source"]
        assert ("mean of five runs" in source) == (row.paper_runs == 5), row.id


def test_a_run_written_before_a_config_key_existed_is_still_reused(tmp_path: Path) -> None:
    """A stored config.yaml without a newer key (here optim.nesterov) is read with that key at its default."""
    import yaml

    from atzoo.config import config_to_dict
    from atzoo.reproduce import states

    session = prepare("ar-at-table3", rows=["cifar10-resnet18/at"], seeds=[0], scale="tiny", out=tmp_path)
    planned = session.planned[0]
    values = config_to_dict(planned.config)
    del values["optim"]["nesterov"]
    planned.run_dir.mkdir(parents=True)
    (planned.run_dir / "config.yaml").write_text(yaml.safe_dump(values))
    (planned.run_dir / "eval.json").write_text("{}")
    assert states(session) == ["done"]
    values["optim"]["lr"] = 0.5
    (planned.run_dir / "config.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match=r"optim.lr=0.5 \(planned 0.1\)"):
        states(session)


def test_out_that_is_a_file_and_jobs_file_that_is_a_folder_are_refused(cli, capsys, tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert cli("reproduce", "ar-at-table3", "--plan", "--out", str(a_file)) == 2
    assert "--out" in capsys.readouterr().err and a_file.read_text() == "keep me"
    assert cli("reproduce", "ar-at-table3", "--emit-jobs", str(tmp_path), "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert err.startswith("atzoo: error: --emit-jobs") and len(err.strip().splitlines()) == 1
