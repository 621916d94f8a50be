"""/docs in headless Chromium: Swagger UI renders the contract under its
Content-Security-Policy (scripts, styles and requests from this origin only)."""

from __future__ import annotations

import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.e2e


def test_swagger_ui_renders_every_operation_under_its_policy(server, browser):
    browser.get(f"{server.url}/docs")
    try:
        WebDriverWait(browser, 30).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 20
        )
    except TimeoutException:
        raise AssertionError(f"Swagger UI did not render: {browser.page_source[:500]}") from None
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/login", "/v1/login/mfa", "/reset-password"} <= {
        p.replace("\u200b", "") for p in paths
    }
