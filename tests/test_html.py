"""``index.html`` in a real browser: Debian's headless Chromium driven by selenium through
Debian's ChromeDriver, both given by path (nothing is downloaded: Selenium Manager is never
asked, and it is told to stay offline). A missing browser or driver fails these tests; they are
never skipped. Also: the page is self-contained, the report is byte-identical without pictures
and its numbers never depend on them, and the pictures come from their cache."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import visual_store
from visual_store import Built

from bench.report import images, write_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
NUMBERS = ("leaderboard.md", "results.csv", "results.json")  # and json/: what no picture may change


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return visual_store.visual_store(tmp_path_factory)


def _options() -> Any:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ):  # no network
        options.add_argument(arg)
    return options


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium; fails (never skips) when Debian's chromium or chromium-driver is
    missing."""
    for exe, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        assert exe.is_file() and os.access(exe, os.X_OK), (
            f"{exe} is missing: install Debian's {package} (scripts/setup.sh does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=_options()
        )
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture(scope="module")
def page(built: Built, browser: Any) -> Any:
    browser.get((built.report / "index.html").as_uri())
    return browser


def _column(page: Any, table: Any, col: int) -> list[tuple[str, str | None]]:
    """(run id, sort value) of each body row, in the order shown."""
    return page.execute_script(
        "return Array.from(arguments[0].tBodies[0].rows).map(r => [r.cells[3].textContent, "
        "r.cells[arguments[1]].getAttribute('data-v')]);",
        table,
        col,
    )


def _distinct_column(page: Any, table: Any, heads: list[str]) -> int:
    """A numeric column whose values differ from row to row (so that sorting must move rows)."""
    for name in ("clean", "worst case", "PGD", "FGSM", "attack gap (FGSM − worst)"):
        values = [v for _, v in _column(page, table, heads.index(name))]
        if None not in values and len(set(values)) == len(values):
            return heads.index(name)
    raise AssertionError("every numeric column has ties: the sort test needs distinct values")


def test_clicking_a_header_sorts_the_leaderboard(page: Any) -> None:
    from selenium.webdriver.common.by import By

    table = page.find_element(By.CSS_SELECTOR, "table.leaderboard#leaderboard-fashion-mnist")
    ths = table.find_elements(By.CSS_SELECTOR, "thead th")
    heads = [th.text.strip() for th in ths]
    assert heads[3] == "run id" and {"clean", "FGSM", "PGD", "worst case", "flags"} <= set(heads)
    col = _distinct_column(page, table, heads)
    before = _column(page, table, col)
    assert len(before) == len(visual_store.DEFENSES)
    orders = []
    for direction in ("ascending", "descending"):
        ths[col].click()
        got = _column(page, table, col)
        wanted = sorted(before, key=lambda r: float(r[1]), reverse=direction == "descending")
        assert got == wanted, (direction, before, got)  # whole rows moved, by value
        assert ths[col].get_attribute("aria-sort") == direction
        orders.append(got)
    assert orders[1] == orders[0][::-1] != orders[0]  # distinct values: each click moved rows
    ths[3].click()  # a text column sorts by text
    ids = [rid for rid, _ in _column(page, table, col)]
    assert ids == sorted(ids) and ths[col].get_attribute("aria-sort") is None


def test_every_image_loads_and_nothing_is_fetched(page: Any, built: Built) -> None:
    imgs = page.execute_script(
        "return Array.from(document.images)"
        ".map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 22)]);"
    )
    assert len(imgs) >= 9
    for alt, complete, width, src in imgs:
        assert complete and width > 0, alt
        assert src == "data:image/png;base64,", alt
    links = page.execute_script(
        "return Array.from(document.querySelectorAll('[src], [href]'))"
        ".map(e => e.getAttribute('src') || e.getAttribute('href'));"
    )
    assert not [u for u in links if re.match(r"^\s*(https?:)?//", u, re.I)]
    raw = (built.report / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", raw, re.I)
    assert "<link" not in raw and not re.search(r"<script[^>]*\bsrc=", raw)


def test_the_page_has_every_picture_the_settings_and_the_curves(page: Any) -> None:
    from selenium.webdriver.common.by import By

    ids = {f.get_attribute("id") for f in page.find_elements(By.TAG_NAME, "figure")}
    wanted = {
        "tradeoff-fashion-mnist",
        "transfer-fashion-mnist-0-1",
        "gradients-fashion-mnist",
        "plot-fashion-mnist-any",
        *(f"adversarial-fashion-mnist-{d}" for d in visual_store.DEFENSES),
    }
    assert wanted <= ids, wanted - ids
    text = page.find_element(By.TAG_NAME, "body").text
    for needle in (
        "Settings, as recorded in the results store",
        "Eps grid: 0, 0.05, 0.1",
        "Full curves",
        "Transfer matrix",
        "crafted on (row) / evaluated on (column)",
        "Pareto front",
        "recomputed from the checkpoint",
        "cached by weights fingerprint",
    ):
        assert needle in text, needle
    cell = page.find_element(
        By.CSS_SELECTOR, "#leaderboard-fashion-mnist tbody td:nth-child(5)"
    ).text
    assert re.fullmatch(r"\d+\.\d \(\d+\.\d–\d+\.\d\)", cell)  # with its interval


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_without_pictures_the_report_is_byte_identical_and_has_the_same_numbers(
    built: Built, tmp_path: Path
) -> None:
    a = write_report(built.db, tmp_path / "a", images=False)
    write_report(built.db, tmp_path / "b", images=False)
    first = _tree(tmp_path / "a")
    assert first == _tree(tmp_path / "b")
    assert "tradeoff-fashion-mnist.png" in first and "transfer-fashion-mnist-0-1.png" in first
    assert not any(n.startswith(("gradients-", "adversarial-", "cache/")) for n in first)
    assert "Pictures were not made (<code>--no-images</code>)." in a.index.read_text()
    pictured = _tree(built.report)
    for name in [*NUMBERS, *(n for n in first if n.startswith("json/"))]:
        assert first[name] == pictured[name], name


def test_pictures_come_from_the_cache_without_the_checkpoints(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(built.report, out)

    def gone(run: Any) -> tuple[None, str]:
        return None, f"`{run.run_id}`: checkpoint gone"

    monkeypatch.setattr(images, "load_net", gone)
    files = write_report(built.db, out, data_dir=built.data)
    assert files.image_seconds >= 0 and _tree(out) == _tree(
        built.report
    )  # every picture from the cache
    write_report(built.db, out, images=False)  # --no-images keeps the cache for the next report
    assert any((out / "cache").iterdir())
    bare = write_report(built.db, tmp_path / "bare", data_dir=built.data)  # no cache, no checkpoint
    html = bare.index.read_text()
    assert "Pictures not made" in html and "checkpoint gone" in html and "gradients-" not in html
    for name in NUMBERS:
        assert (bare.out / name).read_bytes() == (built.report / name).read_bytes(), name


def test_pictures_are_cached_by_fingerprint_and_a_failure_is_a_note(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.store import Store

    with Store(built.db, readonly=True) as s:
        fps = sorted(r.fingerprint.removeprefix("sha256:")[:16] for r in s.runs())
    cached = sorted(p.name.split("-pictures-")[0] for p in (built.report / "cache").iterdir())
    assert cached == fps

    def boom(*_args: Any) -> None:
        raise RuntimeError("no pictures today")

    monkeypatch.setattr(images, "compute", boom)
    files = write_report(built.db, tmp_path / "out", data_dir=built.data)
    assert (
        "computing its pictures failed (RuntimeError: no pictures today)" in files.index.read_text()
    )
    assert files.leaderboard.read_bytes() == (built.report / "leaderboard.md").read_bytes()
