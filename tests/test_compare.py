"""``atzoo compare``: grouping by test set and threat model, seeds by run identity, ranking on
AutoAttack alone, the pass-count cost, outputs."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
from leaderboard_fixtures import make_run, standard_set

from atzoo.errors import AtzooError
from atzoo.report import OUTPUT_FILES, build_leaderboard, compare, load_run, load_runs
from atzoo.report.leaderboard import format_eps
from atzoo.report.plot import pareto_front


def _group(board, eps_label: str):
    return next(g for g in board.groups if g.eps_label == eps_label)


def _entry(group, label: str):
    return next(e for e in group.entries if e.label == label)


def test_seeds_aggregate_to_mean_and_sample_std(tmp_path: Path) -> None:
    board, _ = compare(standard_set(tmp_path / "runs"), out=None)
    at = _entry(_group(board, "8/255"), "at")
    assert at.seeds == 2 and at.clean.n == 2
    assert at.clean.mean == pytest.approx(83.5)
    assert at.clean.std == pytest.approx(statistics.stdev([83.0, 84.0]))  # ddof 1: 0.7071
    assert at.autoattack.text() == "42.50 ± 0.71"
    # s/epoch: mean over epoch rows per run (11.0 and 11.0), then over seeds
    assert at.seconds_per_epoch.mean == pytest.approx(11.0)
    single = _entry(_group(board, "8/255"), "trades")
    assert single.clean.std is None and single.clean.text() == "81.00"


def test_different_eps_lands_in_a_separate_table_with_the_reason(tmp_path: Path) -> None:
    board, _ = compare(standard_set(tmp_path / "runs"), out=None)
    assert [g.eps_label for g in board.groups] == ["8/255", "0.031"]
    assert [e.label for e in _group(board, "0.031").entries] == ["mart"]
    assert "mart" not in [e.label for e in _group(board, "8/255").entries]
    assert board.separation_note is not None and "eps (0.031, 8/255)" in board.separation_note
    assert "threat models" in board.separation_note


def test_norm_and_test_set_separate_but_the_model_does_not(tmp_path: Path) -> None:
    runs = [
        make_run(tmp_path, "a", "at"),
        make_run(tmp_path, "b", "at", norm="l2", eps=0.5),
        make_run(tmp_path, "c", "at", dataset="cifar100"),
        make_run(tmp_path, "d", "at", model="wrn34_10"),
    ]
    board = build_leaderboard(load_runs(runs))
    assert len(board.groups) == 3
    note = board.separation_note
    assert "test set (cifar10, cifar100)" in note and "norm (l2, linf)" in note and "model (" not in note
    shared = board.groups[0]
    assert [e.label for e in shared.entries] == ["at (resnet18)", "at (wrn34_10)"] and shared.model == ""
    assert len({g.title for g in board.groups}) == len(board.groups)


def test_ranking_on_autoattack_and_entries_without_it_listed_after_marked(tmp_path: Path) -> None:
    board, _ = compare(standard_set(tmp_path / "runs"), out=None)
    group = _group(board, "8/255")
    # trades: 81 + 48.5 = 129.5; at: 83.5 + 42.5 = 126; arat has PGD-20 only (87 + 53 = 140 would
    # have ranked first on PGD-20): listed after the ranked entries, without a rank
    assert [(e.rank, e.label) for e in group.entries] == [(1, "trades"), (2, "at"), (None, "arat")]
    arat = _entry(group, "arat")
    assert arat.robust_metric is None and arat.score is None and not arat.ranked
    assert arat.unranked_reason == "no AutoAttack"
    assert _entry(group, "trades").robust_metric == "autoattack"
    assert any("Not ranked" in n and "arat (no AutoAttack)" in n for n in group.notes)
    md = (compare(standard_set(tmp_path / "again"), out=tmp_path / "lb")[1]["leaderboard.md"]).read_text()
    assert "| † | arat † | 1 | 87.00 | 53.00 | - | - |" in md


def test_autoattack_missing_for_one_seed_falls_back_to_pgd(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "s0", "at", seed=0, autoattack=40.0), make_run(tmp_path, "s1", "at", seed=1, autoattack=None)]
    entry = build_leaderboard(load_runs(runs)).groups[0].entries[0]
    assert entry.seeds == 2 and entry.autoattack.n == 1
    assert entry.robust_metric is None and entry.rank is None
    assert entry.unranked_reason == "AutoAttack for 1 of 2 seeds"


def test_cost_per_epoch_and_relative_to_at(tmp_path: Path) -> None:
    board, _ = compare(standard_set(tmp_path / "runs"), out=None)
    group = _group(board, "8/255")
    # the pass-count ratio, in forward-pass units F (attack backward F, training backward 2F):
    # AT with its paper's PGD-7: 7 x (F + F) + (F + 2F) = 17F; TRADES: a clean forward for the
    # KL target, PGD-10 (20F), then clean and adversarial forwards (2F) and their backward (4F) = 27F;
    # AR-AT: PGD-10 (20F) + one forward of cat(x', x) (2F) + its backward (4F) = 26F
    assert _entry(group, "at").cost_vs_at == pytest.approx(1.0)
    assert _entry(group, "trades").cost_vs_at == pytest.approx(27 / 17)
    assert _entry(group, "arat").cost_vs_at == pytest.approx(26 / 17)
    assert _entry(group, "trades").cost_kind == "passes" and _entry(group, "trades").measured_vs_at is None
    assert any("pass-count ratio" in n for n in group.notes)
    # no AT in the eps=0.031 group: seconds shown, ratio absent, and why
    mart = _entry(_group(board, "0.031"), "mart")
    assert mart.seconds_per_epoch.mean == pytest.approx(10.0) and mart.cost_vs_at is None
    assert "no plain AT run" in mart.cost_note


def test_missing_metrics_log_means_missing_cost_not_an_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", "at")
    (run / "metrics.jsonl").unlink()
    (run / "config.yaml").unlink()
    record = load_run(run)
    assert record.seconds_per_epoch is None and record.seed is None
    entry = build_leaderboard([record]).groups[0].entries[0]
    assert entry.seconds_per_epoch is None and entry.score == pytest.approx(80.0 + 45.0)


def test_resumed_epoch_rows_count_once_and_truncated_last_line_is_ignored(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", "at", epoch_seconds=(10.0, 20.0))
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"kind": "epoch", "epoch": 1, "seconds": 30.0}) + "\n")  # epoch 1 again
        handle.write('{"kind": "epo')  # killed mid-write
    assert load_run(run).epoch_seconds == [10.0, 30.0]


def test_partial_epochs_do_not_count_as_epochs(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", "at", epoch_seconds=(10.0,))
    with open(run / "metrics.jsonl", "a") as handle:  # a run stopped by run.max_steps mid-epoch
        handle.write(json.dumps({"kind": "epoch", "epoch": 1, "seconds": 2.0, "partial": True}) + "\n")
    assert load_run(run).seconds_per_epoch == pytest.approx(10.0)


def test_autoattack_subset_is_stated(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "a", "at", n_examples=1000, aa_n_examples=200),
            make_run(tmp_path, "b", "trades", n_examples=1000, aa_n_examples=200)]
    notes = build_leaderboard(load_runs(runs)).groups[0].notes
    assert "AutoAttack ran on the first 200 test examples (clean and PGD-20 on 1000)." in notes


def test_same_method_different_configs_are_separate_labelled_entries(tmp_path: Path) -> None:
    runs = [
        make_run(tmp_path, "a0", "arat", seed=0, overrides=["method.stop_grad=false"]),
        make_run(tmp_path, "a1", "arat", seed=1, overrides=["method.stop_grad=false"]),
        make_run(tmp_path, "b0", "arat", seed=0),
        make_run(tmp_path, "swa", "arat", seed=0, overrides=["averaging.swa=true"]),
    ]
    labels = sorted(e.label for e in build_leaderboard(load_runs(runs)).groups[0].entries)
    assert labels == ["arat [method.stop_grad=False]", "arat [method.stop_grad=True]", "arat+swa"]
    entry = next(e for e in build_leaderboard(load_runs(runs)).groups[0].entries if "False" in e.label)
    assert entry.seeds == 2


def test_run_without_config_is_not_mixed_with_configured_seeds(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "a", "at", seed=0), make_run(tmp_path, "b", "at", seed=1)]
    (runs[1] / "config.yaml").unlink()
    group = build_leaderboard(load_runs(runs)).groups[0]
    assert sorted(e.label for e in group.entries) == ["at", "at [weights unrecorded]"]
    assert any(n.startswith("Could not place") and str(runs[1]) in n for n in group.notes)


def _weights(run: Path, fingerprint: str) -> Path:
    payload = json.loads((run / "eval.json").read_text())
    (run / "eval.json").write_text(json.dumps({**payload, "weights_fingerprint": fingerprint}))
    return run


def test_seeds_are_counted_by_run_identity(tmp_path: Path) -> None:
    """Same weights twice count once; one configuration and seed with two weights are not seeds."""
    copies = [_weights(make_run(tmp_path, n, "at", seed=0, clean=c), "w-same") for n, c in (("a", 80.0), ("b", 80.0))]
    entry = build_leaderboard(load_runs(copies)).groups[0].entries[0]
    assert entry.seeds == 1
    clash = [_weights(make_run(tmp_path, n, "at", seed=0, clean=c), w) for n, c, w in
             (("c", 80.0, "w1"), ("d", 30.0, "w2"))]
    group = build_leaderboard(load_runs(clash)).groups[0]
    assert sorted(e.label for e in group.entries) == ["at [seed 0, weights w1]", "at [seed 0, weights w2]"]
    assert all(e.seeds == 1 for e in group.entries)
    assert any("share configuration and seed 0 but hold different weights" in n for n in group.notes)


def test_a_validation_split_changes_the_training_data_not_the_table(tmp_path: Path) -> None:
    test = {"n": 360, "digest": "t" * 16}
    runs = [make_run(tmp_path, "plain", "at", identity={"name": "digits", "fingerprint": "f1", "test": test,
                                                         "train": {"n": 1437, "digest": "a" * 16}}),
            make_run(tmp_path, "val", "at", overrides=["eval.val_every=1"],
                     identity={"name": "digits", "fingerprint": "f2", "test": test,
                               "train": {"n": 1293, "digest": "b" * 16}})]
    board = build_leaderboard(load_runs(runs))
    assert len(board.groups) == 1 and [e.rank for e in board.groups[0].entries] == [1, 2]
    assert any("2 different training sets" in n for n in board.groups[0].notes)
    assert {r["provenance"][0]["train_data"] for r in board.to_dict()["groups"][0]["rows"]} == {"a" * 16, "b" * 16}


def test_two_test_sets_with_one_name_get_headings_that_say_what_differs(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, n, "at", identity={"name": "npz:c.npz", "fingerprint": n * 8,
                                                   "test": {"n": 10, "digest": n * 16}, "train": {"n": 9, "digest": "x"}})
            for n in ("a", "b")]
    board = build_leaderboard(load_runs(runs))
    titles = [g.title for g in board.groups]
    assert len(titles) == 2 and len(set(titles)) == 2 and all("test set" in t for t in titles)


def test_pareto_front(tmp_path: Path) -> None:
    runs = [
        make_run(tmp_path, "a", "at", clean=80, autoattack=50),
        make_run(tmp_path, "b", "trades", clean=85, autoattack=45),
        make_run(tmp_path, "c", "mart", clean=79, autoattack=44),  # dominated by both
    ]
    group = build_leaderboard(load_runs(runs)).groups[0]
    assert {e.label: e.pareto for e in group.entries} == {"at": True, "trades": True, "mart": False}
    assert [e.label for e in pareto_front(group.entries)] == ["at", "trades"]


def test_paper_rows_only_for_matching_setting_and_threat_model(tmp_path: Path) -> None:
    runs = standard_set(tmp_path / "runs") + [
        make_run(tmp_path / "runs", "at-c100", "at", dataset="cifar100", clean=55.0),
        make_run(tmp_path / "runs", "at-small", "at", model="small_cnn", clean=55.0),
    ]
    board, _ = compare(runs, out=None, paper=True)
    main = next(g for g in board.groups if (g.dataset, g.eps_label) == ("cifar10", "8/255"))
    paper = {e.label: e for e in main.paper}
    assert set(paper) == {"AT (paper)", "TRADES (paper)", "AR-AT (paper)"}  # only methods that were run
    assert (paper["AT (paper)"].clean.mean, paper["AT (paper)"].autoattack.mean) == (83.77, 42.42)
    assert paper["TRADES (paper)"].cost_vs_at == pytest.approx(1.51)
    assert all(e.rank is None for e in main.paper) and main.entries[-1].kind == "paper"
    c100 = next(g for g in board.groups if g.dataset == "cifar100")
    assert [e.label for e in c100.paper] == ["AT (paper)"] and c100.paper[0].clean.mean == 55.82
    # small_cnn shares the table (same test set and threat model) but has no paper setting
    assert "at (small_cnn)" in [e.label for e in main.measured] and len(main.paper) == 3
    assert not _group(board, "0.031").paper  # MART at eps 0.031: not the paper's threat model


def test_paper_variant_rows_need_their_condition(tmp_path: Path) -> None:
    plain = [make_run(tmp_path / "a", "arat", "arat")]
    labels = [e.label for e in compare(plain, out=None, paper=True)[0].groups[0].paper]
    assert labels == ["AR-AT (paper)"]
    swa = [make_run(tmp_path / "b", "arat", "arat", overrides=["averaging.swa=true"])]
    labels = [e.label for e in compare(swa, out=None, paper=True)[0].groups[0].paper]
    assert labels == ["AR-AT (paper)", "AR-AT+SWA (paper)"]
    ablation = [make_run(tmp_path / "c", "arat", "arat", overrides=[
        "method.stop_grad=true", "method.predictor=false", "method.split_bn=false", "method.auto_balance=false",
        "method.layers=[layer4.1.relu2]"])]
    rows = compare(ablation, out=None, paper=True)[0].groups[0].paper
    row = next(e for e in rows if "ablation" in e.label)
    assert row.label == "ablation: stop-grad (paper)"
    assert (row.clean.mean, row.pgd20.mean, row.autoattack) == (82.47, 48.57, None)
    assert row.robust_metric is None and row.rank is None


def test_writes_all_outputs_and_they_agree(tmp_path: Path) -> None:
    out = tmp_path / "lb"
    board, written = compare(standard_set(tmp_path / "runs"), out=out, paper=True)
    assert sorted(written) == sorted(OUTPUT_FILES)
    assert all((out / name).is_file() and (out / name).stat().st_size > 0 for name in OUTPUT_FILES)
    data = json.loads((out / "leaderboard.json").read_text())
    assert data["n_runs"] == 5 and len(data["groups"]) == 2
    at = next(r for r in data["groups"][0]["rows"] if r["label"] == "at")
    assert at["clean"]["mean"] == pytest.approx(83.5) and at["clean"]["n"] == 2 and at["seeds"] == 2
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert len(rows) == sum(len(g["rows"]) for g in data["groups"])
    at_csv = next(r for r in rows if r["label"] == "at")
    assert float(at_csv["clean_std"]) == pytest.approx(0.70710678) and at_csv["kind"] == "measured"
    md = (out / "leaderboard.md").read_text()
    assert "83.50 ± 0.71" in md and "*AT (paper)*" in md and "separate tables" in md
    html = (out / "leaderboard.html").read_text()
    assert "<script src" not in html and "http://" not in html and "https://" not in html  # standalone
    assert html.count('<table class="leaderboard">') == 2
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_has_each_methods_settings_ledger_with_sources(tmp_path: Path) -> None:
    """Every method of the page gets a collapsed settings section with the rows of
    ``atzoo docs METHOD --settings`` (same function), escaped, linked from its rows; a run
    whose config.yaml differs from the recipe says where."""
    import html as html_lib
    import re

    from atzoo.ledger import check_recipe, settings_recipe, settings_rows

    runs = standard_set(tmp_path / "runs") + [
        make_run(tmp_path / "runs", "trades-beta3", "trades", overrides=["method.beta=3.0"])]
    out = tmp_path / "lb"
    compare(runs, out=out, paper=True)
    page = (out / "leaderboard.html").read_text()
    sections = dict(re.findall(r'<details class="settings" id="([^"]+)">(.*?)</details>', page, re.S))
    assert sorted(sections) == ["settings-arat-arat_cifar10_resnet18", "settings-at-at_cifar10_resnet18",
                                "settings-mart-mart_cifar10_resnet18", "settings-trades-trades_cifar10_resnet18"]
    for anchor in sections:  # each section is reachable from its method's rows
        assert f'href="#{anchor}"' in page
    for method in ("at", "trades", "mart", "arat"):
        body = sections[f"settings-{method}-{method}_cifar10_resnet18"]
        assert f"<summary>Settings of {method} (recipe {method}_cifar10_resnet18)</summary>" in body
        rows = settings_rows(check_recipe(settings_recipe(method)))
        cells = re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>")[1], re.S)
        assert len(cells) == len(rows) and any(row["source"] for row in rows)
        for row, html_row in zip(rows, cells):
            assert html_row == "".join(f"<td>{html_lib.escape(row[k])}</td>"
                                       for k in ("setting", "atzoo", "official", "source", "note"))
    at_eps = next(r for r in settings_rows(check_recipe(settings_recipe("at"))) if r["setting"] == "attack.eps")
    assert at_eps["atzoo"] == "8/255" and at_eps["source"]
    assert (f"<tr><td>attack.eps</td><td>8/255</td><td>{html_lib.escape(at_eps['official'])}</td>"
            f"<td>{html_lib.escape(at_eps['source'])}</td>") in sections["settings-at-at_cifar10_resnet18"]
    trades = sections["settings-trades-trades_cifar10_resnet18"]
    assert "method.beta=3 (run trades-beta3)" in html_lib.unescape(trades)  # the override run differs from the recipe
    assert "Rows: TRADES (paper)" in trades


def test_out_dir_keeps_other_files_and_overwrites_its_own(tmp_path: Path) -> None:
    out = tmp_path / "lb"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "leaderboard.md").write_text("old")
    compare(standard_set(tmp_path / "runs"), out=out)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "leaderboard.md").read_text().startswith("# atzoo leaderboard")
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUT_FILES, "notes.txt"])  # no temp files left


@pytest.mark.parametrize(
    "setup, pattern",
    [
        (lambda root: [root / "missing"], r"run directory not found: .*missing"),
        (lambda root: [root / "afile.txt"], r"is not a run directory"),
        (lambda root: [root / "empty"], r"has no eval.json: evaluate the run first"),
        (lambda root: [root / "badjson"], r"eval.json is not valid JSON"),
        (lambda root: [root / "nokeys"], r"eval.json lacks key\(s\) method"),
        (lambda root: [], r"no run directories given"),
    ],
)
def test_bad_input_is_one_line_error_and_writes_nothing(tmp_path: Path, setup, pattern: str) -> None:
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "eval.json").write_text("{not json")
    (tmp_path / "nokeys").mkdir()
    (tmp_path / "nokeys" / "eval.json").write_text(json.dumps({"clean_acc": 50.0}))
    good = make_run(tmp_path, "good", "at")
    with pytest.raises(AtzooError, match=pattern) as info:
        compare([good, *setup(tmp_path)] if setup(tmp_path) else [], out=tmp_path / "lb")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "lb").exists()


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "lb"
    target.write_text("precious")
    with pytest.raises(AtzooError, match="exists and is not a folder"):
        compare(standard_set(tmp_path / "runs"), out=target)
    assert target.read_text() == "precious"


def test_cli_prints_tables_and_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from atzoo.cli import run

    runs = [str(p) for p in standard_set(tmp_path / "runs")]
    out = tmp_path / "board"
    assert run(["compare", *runs, "--out", str(out), "--paper"]) == 0
    printed = capsys.readouterr().out
    assert "cifar10 · resnet18 · L-inf eps=8/255" in printed and "eps=0.031" in printed
    assert "(paper)" in printed and "separate tables" in printed
    assert all((out / name).is_file() for name in OUTPUT_FILES)


def test_cli_bad_path_exit_2_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from atzoo.cli import run

    assert run(["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("atzoo: error: run directory not found")
    assert run(["compare", "--out", str(tmp_path / "lb")]) == 2
    assert "no run directories given" in capsys.readouterr().err
    assert not (tmp_path / "lb").exists()


def test_format_eps() -> None:
    assert format_eps(8 / 255) == "8/255" and format_eps(0.031) == "0.031" and format_eps(0.5) == "0.5"


# --------------------------------------------------------------------------- issue 26: pictures


def _with_losses(run: Path, start: float, end: float) -> Path:
    """Adds 40 step rows whose loss falls from ``start`` to ``end``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] != "step"]
    rows += [{"kind": "step", "epoch": 0, "step": s, "loss": end + (start - end) * (40 - s) / 39} for s in range(1, 41)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_tradeoff_axes_stay_within_0_and_100_and_point_keys_do_not_overlap(tmp_path: Path) -> None:
    """Points at 100 % clean and 0 % robust, with seed error bars, must not stretch the axes
    past 0-100 (seen: 94-106, and -5); keys of close points must not cover each other."""
    root = tmp_path / "runs"
    runs = [make_run(root, "std-s0", "standard", seed=0, clean=100.0, pgd20=0.0, autoattack=0.0, dataset="digits"),
            make_run(root, "std-s1", "standard", seed=1, clean=98.0, pgd20=4.0, autoattack=3.0, dataset="digits"),
            make_run(root, "at", "at", clean=99.0, pgd20=92.0, autoattack=90.5, dataset="digits"),
            make_run(root, "trades", "trades", clean=99.05, pgd20=92.1, autoattack=90.6, dataset="digits"),
            make_run(root, "mart", "mart", clean=99.1, pgd20=92.0, autoattack=90.5, dataset="digits")]
    board = build_leaderboard(load_runs(runs))
    from atzoo.report.plot import tradeoff_figure

    fig = tradeoff_figure(board)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert 0 <= ax.get_xlim()[0] < ax.get_xlim()[1] <= 100 and 0 <= ax.get_ylim()[0] < ax.get_ylim()[1] <= 100
    boxes = [t.get_window_extent() for t in ax.texts]
    assert len(boxes) == 4
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), [b.bounds for b in boxes]
    title = fig.get_suptitle()
    assert max(len(line) for line in title.splitlines()) * 0.085 <= fig.get_figwidth()  # not cut at the sides


def test_loss_curves_are_small_multiples_each_on_its_own_scale(tmp_path: Path) -> None:
    """AR-AT's loss (~12) and AT's (~2) on one axis flattened AT's curve: one panel each."""
    from atzoo.report.plot import curves_figure

    root = tmp_path / "runs"
    runs = [_with_losses(make_run(root, "arat", "arat", clean=87.0, autoattack=49.0), 14.0, 11.5),
            _with_losses(make_run(root, "at", "at", clean=82.0, autoattack=47.0), 2.3, 1.2),
            _with_losses(make_run(root, "trades", "trades", clean=81.0, autoattack=48.0), 2.0, 1.0)]
    fig = curves_figure(build_leaderboard(load_runs(runs)))
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == 3
    by_title = {ax.get_title(loc="left").split()[-1]: ax for ax in panels}
    assert set(by_title) == {"arat", "at", "trades"}
    assert by_title["arat"].get_ylim()[0] > 10 and by_title["at"].get_ylim()[1] < 3  # each its own scale


def test_run_curves_name_the_run_use_whole_epochs_and_draw_the_lr_as_steps(tmp_path: Path) -> None:
    from atzoo.config import build_config
    from atzoo.engine.curves import curves_plot, run_title

    cfg = build_config(None, [], method={"name": "at"}, model={"name": "resnet18"}, data={"name": "cifar10"})
    title = run_title("at-resnet18-cifar10-s0", cfg)
    assert title == "at-resnet18-cifar10-s0 · at · resnet18 on cifar10 · L-inf eps=8/255 (PGD-7 in training)"
    curves = {"loss": [(1, 2.0), (2, 1.5), (3, 1.2)], "lr": [(1, 0.1), (2, 0.1), (3, 0.01)],
              "train_acc": [(1, 40.0), (2, 50.0), (3, 55.0)]}
    fig = curves_plot({"run": curves}, title=title)
    fig.canvas.draw()
    assert fig.get_suptitle() == title
    loss_ax, _, lr_ax = fig.axes
    assert all(float(t).is_integer() for t in loss_ax.get_xticks())
    (lr_line,) = lr_ax.lines
    assert lr_line.get_drawstyle() == "steps-pre" and list(lr_line.get_xdata()) == [0, 1, 2, 3]
