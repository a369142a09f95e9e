"""The fleet page in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
installed by scripts/test): the daemon's app on 127.0.0.1, the real engine with canary values
from a fake source and the Git sink; load the page, filter by state and by cluster label,
assert which rows and cells remain, save a screenshot under test-artifacts/, and check that
no canary value reached the page.

The browser is started with a fresh profile and without background networking, component
updates or sync, so it talks to nothing but the page under test.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web as aioweb
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from secretsync.core import errors
from secretsync.daemon.web import make_app
from secretsync.sinks.git.sink import GitSink
from tests.e2e.test_web import HMAC, make_daemon
from tests.support import canary, cycles, fleets
from tests.support.fakes import FakeSource

MakeRepo = Callable[[dict[str, str | bytes]], Path]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
)


def _tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        f"none of {', '.join(names)} on PATH: scripts/test installs Debian's chromium and "
        "chromium-driver (apt-get install chromium chromium-driver)"
    )


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    # the WebDriver wire log would hold every screenshot and page source: keep it quiet
    quiet = {name: logging.getLogger(name) for name in ("selenium", "urllib3")}
    levels = {name: logger.level for name, logger in quiet.items()}
    for logger in quiet.values():
        logger.setLevel(logging.WARNING)
    options = webdriver.ChromeOptions()
    options.binary_location = _tool("chromium", "chromium-browser")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(executable_path=_tool("chromedriver"), log_output=str(tmp_path / "drv.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()  # ends the chromedriver and the Chromium it started
        for name, logger in quiet.items():
            logger.setLevel(levels[name])


@pytest.fixture
async def page_url(fleet_repo: MakeRepo) -> AsyncIterator[tuple[str, Any]]:
    """The fleet page after a cycle: most objects synced; prod-euw1's payments-db and
    staging-use1's web-api failed (their Vault paths are sealed). staging-euw1 reads the same
    staging path, but its ExternalSecret needs no value: it is synced."""
    repo = fleets.write_fleet(fleet_repo)
    values = fleets.vault_docs()
    del values["web/staging"]  # failing below
    source = FakeSource(values)
    source.failing["web/staging"] = errors.SourceUnavailable(
        "vault:secret/web/staging: the server is sealed (HTTP 503)"
    )
    source.failing["payments/eu/db"] = errors.SourceUnavailable(
        "vault:secret/payments/eu/db: the server is sealed (HTTP 503)"
    )
    engine = cycles.engine(source, GitSink(out_dir=repo / "rendered"), key=HMAC)
    daemon = make_daemon(repo, engine, key=canary.new("whsec").encode())
    await daemon.cycle(trigger="start")
    runner = aioweb.AppRunner(make_app(daemon), access_log=None)
    await runner.setup()
    site = aioweb.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        assert host == "127.0.0.1"
        yield f"http://127.0.0.1:{port}/", daemon
    finally:
        await runner.cleanup()


def _visible_rows(driver: webdriver.Chrome) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.cluster")
    return [r.get_attribute("data-cluster") or "" for r in rows if r.is_displayed()]


def _lit_cells(driver: webdriver.Chrome, cluster: str) -> dict[str, str]:
    """Secret -> state of the cells of a row that are shown and not dimmed."""
    row = driver.find_element(By.CSS_SELECTOR, f'tr.cluster[data-cluster="{cluster}"]')
    return {
        td.get_attribute("data-secret") or "": td.text
        for td in row.find_elements(By.CSS_SELECTOR, "td.cell")
        if td.is_displayed() and "dim" not in (td.get_attribute("class") or "").split()
    }


def _drive(driver: webdriver.Chrome, url: str, shot: Path) -> dict[str, Any]:
    """Everything the browser does (blocking, so it runs in a thread beside the server)."""
    seen: dict[str, Any] = {}
    driver.get(url)
    WebDriverWait(driver, 10).until(
        lambda d: "object(s) shown" in d.find_element(By.ID, "shown").text
    )
    seen["title"] = driver.title
    seen["all"] = _visible_rows(driver)
    seen["all_shown"] = driver.find_element(By.ID, "shown").text

    Select(driver.find_element(By.ID, "f-state")).select_by_value("failed")
    seen["failed"] = _visible_rows(driver)
    seen["failed_cells"] = {c: _lit_cells(driver, c) for c in seen["failed"]}
    seen["failed_shown"] = driver.find_element(By.ID, "shown").text

    Select(driver.find_element(By.ID, "f-label")).select_by_value("region=us-east-1")
    seen["failed_us"] = _visible_rows(driver)

    Select(driver.find_element(By.ID, "f-state")).select_by_value("")
    seen["us"] = _visible_rows(driver)
    seen["us_cells"] = {c: _lit_cells(driver, c) for c in seen["us"]}
    seen["problems"] = driver.find_element(By.ID, "problems").text

    Select(driver.find_element(By.ID, "f-state")).select_by_value("synced")
    seen["synced_us"] = _visible_rows(driver)
    seen["synced_us_cells"] = {c: _lit_cells(driver, c) for c in seen["synced_us"]}
    shot.parent.mkdir(parents=True, exist_ok=True)
    seen["saved"] = driver.save_screenshot(str(shot))
    seen["source"] = driver.page_source
    return seen


async def test_fleet_page_in_chromium_filters_and_shows_no_values(
    browser: webdriver.Chrome, page_url: tuple[str, Any]
) -> None:
    url, daemon = page_url
    shot = ARTIFACTS / "fleet-page.png"
    shot.unlink(missing_ok=True)
    async with asyncio.timeout(120):
        seen = await asyncio.to_thread(_drive, browser, url, shot)

    states = {(e.cluster, e.fleet_secret): e.state.value for e in daemon.board.entries.values()}
    assert states == {
        ("prod-use1", "payments-db"): "synced",
        ("prod-use1", "web-api"): "synced",
        ("prod-euw1", "payments-db"): "failed",
        ("prod-euw1", "web-api"): "synced",
        ("staging-use1", "web-api"): "failed",
        ("staging-euw1", "payments-db"): "synced",
        ("staging-euw1", "web-api"): "synced",
        ("dev-use1", "web-api"): "pending",  # direct delivery: no Kubernetes sink here
    }

    assert "acme" in seen["title"]
    assert seen["all"] == ["dev-use1", "prod-euw1", "prod-use1", "staging-euw1", "staging-use1"]
    assert seen["all_shown"] == "8 object(s) shown"

    assert seen["failed"] == ["prod-euw1", "staging-use1"]
    assert seen["failed_cells"] == {
        "prod-euw1": {"payments-db": "failed"},
        "staging-use1": {"web-api": "failed"},
    }
    assert seen["failed_shown"] == "2 object(s) shown"
    assert seen["failed_us"] == ["staging-use1"]

    assert seen["us"] == ["dev-use1", "prod-use1", "staging-use1"]
    assert seen["us_cells"] == {
        "dev-use1": {"web-api": "pending"},
        "prod-use1": {"payments-db": "synced", "web-api": "synced"},
        "staging-use1": {"web-api": "failed"},
    }
    assert "staging-use1 / web-api" in seen["problems"]
    assert "sealed (HTTP 503)" in seen["problems"]

    assert seen["synced_us"] == ["prod-use1"]
    assert seen["synced_us_cells"] == {"prod-use1": {"payments-db": "synced", "web-api": "synced"}}

    assert seen["saved"] is True
    with shot.open("rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 5_000
    assert canary.find_in_text(seen["source"]) == []
