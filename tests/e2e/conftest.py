"""Fixtures of the browser tests: a real server on localhost and headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from tests.e2e.server import LiveServer

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One per module (a module may define its own): gunicorn on localhost, since an IP
    address is not a valid WebAuthn RP ID."""
    live = LiveServer(tmp_path_factory.mktemp("server"), host="localhost", workers=2)
    live.env["AUTHSVC_WEBAUTHN_RP_ID"] = "localhost"
    live.env["AUTHSVC_WEBAUTHN_ORIGINS"] = f"http://localhost:{live.port}"
    with live:
        yield live


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()
