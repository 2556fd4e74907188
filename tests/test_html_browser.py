"""The leaderboard page in a real headless browser: rows render and header clicks sort.

Opened as ``leaderboard.html#selftest``, the page clicks the headers of its first table
itself (clean twice, then method) and writes the row orders as JSON into
``<pre id="selftest-result">``; Chromium's ``--dump-dom`` prints the DOM after the
page's scripts ran. Needs Chromium (Debian: ``apt-get install -y chromium``); the test
skips, saying so, where no Chromium binary is found.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from leaderboard_fixtures import make_run

from atzoo.report import compare

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def dump_dom(browser: str, page: Path, profile: Path, width: int | None = None) -> str:
    """The DOM of ``page#selftest`` after its scripts ran, from headless Chromium."""
    size = [f"--window-size={width},1000"] if width else []
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *size,
        "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri() + "#selftest",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def browser() -> str:
    found = find_browser()
    if found is None:
        pytest.skip("no Chromium binary on PATH; install it with 'apt-get install -y chromium' (Debian)")
    return found


def test_rows_render_and_header_clicks_sort(tmp_path: Path, browser: str) -> None:
    root = tmp_path / "runs"
    runs = [
        make_run(root, "at-s0", "at", seed=0, clean=83.0, autoattack=42.0),
        make_run(root, "at-s1", "at", seed=1, clean=84.0, autoattack=43.0),
        make_run(root, "trades", "trades", clean=81.0, autoattack=48.5),
        make_run(root, "mart", "mart", clean=82.0, autoattack=47.0),
        make_run(root, "arat", "arat", clean=87.5, autoattack=49.0),
    ]
    board, written = compare(runs, out=tmp_path / "lb", paper=True)
    dom = dump_dom(browser, written["leaderboard.html"], tmp_path / "profile")

    match = re.search(r'<pre id="selftest-result"[^>]*>(.*?)</pre>', dom, re.S)
    assert match and match.group(1), "the page's script did not run"
    result = json.loads(html.unescape(match.group(1)))

    entries = board.groups[0].entries  # 4 measured + 4 paper rows (at, trades, mart, arat)
    labels = [e.label for e in entries]
    assert result["tables"] == 1 and result["rows"] == len(entries) == 8
    assert result["initial"] == labels  # rendered in rank order, paper rows last
    assert dom.count("<tr class=") == len(entries)

    # first click on a numeric header: best first; ties keep their previous order
    by_clean = sorted(entries, key=lambda e: -e.clean.mean)
    assert result["clean_first_click"] == [e.label for e in by_clean]
    assert result["clean_first_sort"] == "descending"
    assert result["clean_second_click"] == [e.label for e in sorted(entries, key=lambda e: e.clean.mean)]
    assert result["label_click"] == sorted(labels, key=str.lower)
    assert result["clean_first_click"][0] == "AR-AT (paper)"  # 87.82 beats the measured 87.5


def test_missing_values_sort_last(tmp_path: Path, browser: str) -> None:
    root = tmp_path / "runs"
    runs = [
        make_run(root, "a", "at", clean=None, pgd20=40.0, autoattack=None),
        make_run(root, "b", "trades", clean=70.0),
        make_run(root, "c", "mart", clean=90.0),
    ]
    _, written = compare(runs, out=tmp_path / "lb")
    dom = dump_dom(browser, written["leaderboard.html"], tmp_path / "profile")
    result = json.loads(html.unescape(re.search(r'<pre id="selftest-result"[^>]*>(.*?)</pre>', dom, re.S).group(1)))
    assert result["clean_first_click"] == ["mart", "trades", "at"]
    assert result["clean_second_click"] == ["trades", "mart", "at"]


@pytest.mark.parametrize("width", [1400, 800])
def test_no_column_is_cut_off_at_1400_or_800_pixels(tmp_path: Path, browser: str, width: int) -> None:
    """The page never runs past the window's right edge (where the last column used to be
    cut off); a table wider than the window scrolls inside its own box, which holds every
    column."""
    root = tmp_path / "runs"
    runs = [make_run(root, f"{m}-resnet18-cifar10-with-a-long-run-name-s{s}", m, seed=s, clean=80.0 + s, autoattack=45.0)
            for m in ("at", "trades", "mart", "arat", "asym_trades") for s in (0, 1)]
    _, written = compare(runs, out=tmp_path / "lb", paper=True)
    dom = dump_dom(browser, written["leaderboard.html"], tmp_path / "profile", width=width)
    layout = json.loads(html.unescape(re.search(r'<pre id="selftest-result"[^>]*>(.*?)</pre>', dom, re.S).group(1)))["layout"]
    assert layout["page"] <= layout["viewport"], layout  # nothing past the right edge of the window
    for table in layout["tables"]:
        assert table["box_right"] <= layout["viewport"] and table["overflow_x"] == "auto", table
        assert table["last_right"] <= table["box_scroll"] + 1, table  # the last column is inside the box
