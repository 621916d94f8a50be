"""The /ui page and the link pages as a person meets the service's refusals, in headless
Chromium against a real server: too many attempts (429 with Retry-After), a service that cannot
reach its rate-limit store (503 with Retry-After), a session ended elsewhere, a second step whose
token died. Each is said in words, with what to do next, never as a problem's JSON or not at all.

The server has a Redis of its own, which a test stops; the last test stops the server.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.server import LiveServer, free_port
from tests.e2e.test_link_pages import _call
from tests.e2e.test_webauthn_browser import (
    PASSWORD,
    _create_user,
    _sign_in_with_password,
    _status,
    _totp,
    _visible,
)

pytestmark = pytest.mark.e2e

WAIT = re.compile(r"Try again in (\d+) seconds?\.")


class OwnRedis:
    """A redis-server of the module's own, which a test may stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="module")
def own_redis() -> Iterator[OwnRedis]:
    own = OwnRedis()
    own.start()
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, own_redis) -> Iterator[LiveServer]:
    live = LiveServer(
        tmp_path_factory.mktemp("server"),
        host="localhost",
        workers=2,
        env={
            "AUTHSVC_REDIS_URL": f"redis://127.0.0.1:{own_redis.port}/0",
            "AUTHSVC_LIMIT_IP_EMAIL": "3/minute",
        },
    )
    with live:
        yield live


def _clear_status(driver: WebDriver) -> None:
    driver.execute_script("document.getElementById('status').textContent = ''")


def _refusal(driver: WebDriver) -> str:
    """Wait for the status line to show a refusal; return it."""
    status = driver.find_element(By.ID, "status")
    WebDriverWait(driver, 20).until(
        lambda _: status.get_attribute("class") == "error" and status.text
    )
    return str(status.text)


def _readable(text: str) -> None:
    assert "{" not in text and '"code"' not in text and "JSON" not in text, text


def _with_app(server: LiveServer, email: str) -> str:
    """A verified account with an authenticator app; returns the app's secret."""
    _create_user(server, email)
    access = _call(server, "/v1/login", {"email": email, "password": PASSWORD})[1]["access_token"]
    pending = _call(server, "/v1/me/mfa/totp", {}, access)[1]
    confirm = f"/v1/me/mfa/totp/{pending['factor_id']}/confirm"
    assert _call(server, confirm, {"code": _totp(pending["secret"])}, access)[0] == 200
    return str(pending["secret"])


def test_too_many_attempts_say_when_to_try_again(server, browser):
    email = "many@example.com"
    _create_user(server, email)
    browser.get(f"{server.url}/ui/")
    for _ in range(6):
        _clear_status(browser)
        browser.find_element(By.ID, "email").clear()
        browser.find_element(By.ID, "email").send_keys(email)
        browser.find_element(By.ID, "password").clear()
        browser.find_element(By.ID, "password").send_keys("not the password 1")
        browser.find_element(By.ID, "password-submit").click()
        text = _refusal(browser)
        if "Too many" in text:
            break
        assert "Invalid credentials" in text
    else:
        raise AssertionError("never refused as too many attempts")
    found = WAIT.search(text)
    assert found and 1 <= int(found.group(1)) <= 60, text
    assert text.startswith("Too many attempts.")
    _readable(text)


def test_a_session_ended_elsewhere_sends_the_page_back_to_sign_in(server, browser):
    email = "ended@example.com"
    _create_user(server, email)
    browser.get(f"{server.url}/ui/")
    _sign_in_with_password(browser, email)
    _status(browser, "Signed in.")
    # Another device signs every other session out: this browser's too.
    phone = _call(server, "/v1/login", {"email": email, "password": PASSWORD})[1]
    assert _bearer(server, "DELETE", "/v1/me/sessions", phone["access_token"]) == 200

    browser.find_element(By.ID, "add-totp").click()
    text = _status(browser, "Your session has ended")
    _readable(text)
    assert _visible(browser, "login-view") and not _visible(browser, "account-view")
    assert email not in browser.page_source  # nothing of the account is left behind


def _bearer(server: LiveServer, method: str, path: str, token: str) -> int:
    request = urllib.request.Request(
        f"{server.url}{path}", method=method, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def test_a_second_step_whose_token_died_starts_over(server, browser):
    email = "dead-step@example.com"
    secret = _with_app(server, email)
    browser.get(f"{server.url}/ui/")
    _sign_in_with_password(browser, email)
    _status(browser, "Password accepted")
    wrong = "000000" if _totp(secret, offset=30) != "000000" else "111111"
    for _ in range(5):  # the token's attempts, each refused
        _clear_status(browser)
        browser.find_element(By.ID, "mfa-totp").send_keys(wrong)
        browser.find_element(By.ID, "mfa-totp-submit").click()
        _status(browser, "The second factor was not accepted")
    _clear_status(browser)
    browser.find_element(By.ID, "mfa-totp").send_keys(wrong)
    browser.find_element(By.ID, "mfa-totp-submit").click()
    text = _status(browser, "Sign in again")
    _readable(text)
    assert _visible(browser, "login-view") and not _visible(browser, "mfa-view")

    _sign_in_with_password(browser, email)  # and signing in again works
    _status(browser, "Password accepted")
    browser.find_element(By.ID, "mfa-totp").send_keys(_totp(secret, offset=30))
    browser.find_element(By.ID, "mfa-totp-submit").click()
    _status(browser, "Signed in.")


def test_the_password_leaves_the_page_once_the_second_step_asks(server, browser):
    email = "gone@example.com"
    _with_app(server, email)
    browser.get(f"{server.url}/ui/")
    _sign_in_with_password(browser, email)
    _status(browser, "Password accepted")
    assert browser.execute_script("return document.getElementById('password').value") == ""
    browser.find_element(By.ID, "mfa-cancel").click()
    assert _visible(browser, "login-view")


def test_recovery_codes_leave_the_page_once_put_away(server, browser):
    email = "codes@example.com"
    _create_user(server, email)
    browser.get(f"{server.url}/ui/")
    _sign_in_with_password(browser, email)
    _status(browser, "Signed in.")
    browser.find_element(By.ID, "add-totp").click()
    _status(browser, "Scan the code")
    secret = browser.find_element(By.ID, "totp-secret").text
    browser.find_element(By.ID, "totp-code").send_keys(_totp(secret))
    browser.find_element(By.ID, "totp-confirm").click()
    _status(browser, "Authenticator app added.")
    codes = browser.find_element(By.ID, "recovery-codes-list").text.split()
    assert codes and _visible(browser, "recovery-codes")

    browser.find_element(By.ID, "recovery-codes-saved").click()
    assert not _visible(browser, "recovery-codes")
    page = browser.page_source
    assert not [code for code in codes if code in page]
    assert _visible(browser, "account-view")


def test_an_unreachable_service_says_so_and_when_to_try_again(server, browser, own_redis):
    """It stops the server's Redis, and starts it again (empty) when done."""
    email = "down@example.com"
    _create_user(server, email)
    own_redis.stop()

    browser.get(f"{server.url}/ui/")
    _sign_in_with_password(browser, email)
    text = _status(browser, "unavailable")
    assert text.startswith("The service is busy or unavailable right now.")
    found = WAIT.search(text)
    assert found and int(found.group(1)) >= 1, text
    _readable(text)
    own_redis.start()  # for the next test


def test_a_server_out_of_reach_is_said_so(server, browser):
    """Last: it stops the server. The browser's fetch fails without any answer."""
    email = "away@example.com"
    _create_user(server, email)
    browser.get(f"{server.url}/ui/")
    _sign_in_with_password(browser, email)
    _status(browser, "Signed in.")
    server.stop()
    # Signing out still empties the page, and says that the session could not be ended.
    browser.find_element(By.ID, "logout").click()
    text = _refusal(browser)
    assert text.startswith("Signed out of this page only: the service could not be reached"), text
    assert "try again" not in text.lower()  # nothing is left to try again with
    assert _visible(browser, "login-view") and email not in browser.page_source

    browser.find_element(By.ID, "email").clear()
    browser.find_element(By.ID, "email").send_keys(email)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "password-submit").click()
    text = _refusal(browser)
    assert text.startswith("The service could not be reached."), text
    assert "Failed to fetch" not in text and "Something went wrong" not in text
