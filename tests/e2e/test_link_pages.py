"""The pages mailed links open, in headless Chromium against a real server: confirming an
address, and choosing a new password with the second factor an account with TOTP needs."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.e2e.server import LiveServer
from tests.e2e.test_webauthn_browser import _status, _totp, _visible

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse 42"
NEW_PASSWORD = "a brand new horse 43"


def _call(server: LiveServer, path: str, body: dict[str, Any], token: str | None = None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{server.url}{path}", method="POST", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _link(server: LiveServer, to: str, subject: str, path: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in reversed(server.mails()):
            if message["To"] == to and message["Subject"] == subject:
                found = re.search(rf"https?://\S+/{path}\?token=\S+", message.get_content())
                assert found, message.get_content()
                return found.group(0)
        time.sleep(0.1)
    raise AssertionError(f"no mail {subject!r} to {to}")


def _open(driver: WebDriver, server: LiveServer, link: str) -> None:
    # The server may run on localhost while AUTHSVC_PUBLIC_URL names 127.0.0.1: same page.
    driver.get(server.url + link[link.index("/", len("https://")) :])
    assert "token=" not in driver.current_url  # the page dropped it from the address


def test_a_verification_link_confirms_the_address_when_asked(server, browser):
    email = "lin@example.com"
    assert _call(server, "/v1/signup", {"email": email, "password": PASSWORD})[0] == 202
    link = _link(server, email, "Confirm your email address", "verify-email")

    _open(browser, server, link)
    assert _visible(browser, "verify-view")
    assert _call(server, "/v1/login", {"email": email, "password": PASSWORD})[0] == 401
    browser.find_element(By.ID, "verify-submit").click()
    _status(browser, "Your email address is confirmed")

    status, body = _call(server, "/v1/login", {"email": email, "password": PASSWORD})
    assert (status, body["status"]) == (200, "authenticated")
    assert _visible(browser, "done-view") and not _visible(browser, "verify-view")
    _open(browser, server, link)  # used: the page says so
    browser.find_element(By.ID, "verify-submit").click()
    _status(browser, "This link is invalid, expired or already used")


def test_a_reset_link_sets_a_new_password_with_the_second_factor(server, browser):
    email = "mfa-reset@example.com"
    assert _call(server, "/v1/signup", {"email": email, "password": PASSWORD})[0] == 202
    verify = _link(server, email, "Confirm your email address", "verify-email")
    token = verify.split("token=")[1]
    assert _call(server, "/v1/signup/verify", {"token": token})[0] == 200
    access = _call(server, "/v1/login", {"email": email, "password": PASSWORD})[1]["access_token"]
    pending = _call(server, "/v1/me/mfa/totp", {}, access)[1]
    confirm = f"/v1/me/mfa/totp/{pending['factor_id']}/confirm"
    assert _call(server, confirm, {"code": _totp(pending["secret"])}, access)[0] == 200
    assert _call(server, "/v1/password/forgot", {"email": email})[0] == 202
    link = _link(server, email, "Reset your password", "reset-password")

    _open(browser, server, link)
    browser.find_element(By.ID, "new-password").send_keys(NEW_PASSWORD)
    browser.find_element(By.ID, "new-password-again").send_keys(NEW_PASSWORD)
    browser.find_element(By.ID, "reset-submit").click()
    _status(browser, "Give your second factor too")
    assert _visible(browser, "reset-totp") and _visible(browser, "reset-recovery")
    assert not _visible(browser, "reset-webauthn")
    # The confirming code's step is spent; the next one is inside the accepted window.
    browser.find_element(By.ID, "reset-totp-code").send_keys(_totp(pending["secret"], offset=30))
    browser.find_element(By.ID, "reset-submit").click()
    _status(browser, "Your password is set")

    assert _call(server, "/v1/login", {"email": email, "password": PASSWORD})[0] == 401
    status, body = _call(server, "/v1/login", {"email": email, "password": NEW_PASSWORD})
    assert (status, body["status"]) == (200, "mfa_required")


def _spelled(code: str) -> str:
    return f"{code[:3]}-{code[3:]}"


@pytest.mark.parametrize(
    ("page", "field"), [("/ui/", "mfa-totp"), ("/reset-password", "reset-totp-code")]
)
def test_the_code_fields_take_every_spelling_the_api_takes(server, browser, page, field):
    # The API takes "123456", "123 456" and "123-456": the browser must not refuse to send
    # any of them, and still refuses what is no code.
    browser.get(f"{server.url}{page}")
    element = browser.find_element(By.ID, field)
    valid = "arguments[0].value = arguments[1]; return arguments[0].checkValidity()"
    for spelling in ("123456", "123 456", "123-456", "123 - 456"):
        assert browser.execute_script(valid, element, spelling), spelling
    assert not browser.execute_script(valid, element, "12a456")


def test_a_code_typed_with_a_hyphen_signs_in_on_the_page(server, browser):
    email = "hyphen@example.com"
    assert _call(server, "/v1/signup", {"email": email, "password": PASSWORD})[0] == 202
    verify = _link(server, email, "Confirm your email address", "verify-email")
    assert _call(server, "/v1/signup/verify", {"token": verify.split("token=")[1]})[0] == 200
    access = _call(server, "/v1/login", {"email": email, "password": PASSWORD})[1]["access_token"]
    pending = _call(server, "/v1/me/mfa/totp", {}, access)[1]
    confirm = f"/v1/me/mfa/totp/{pending['factor_id']}/confirm"
    assert _call(server, confirm, {"code": _totp(pending["secret"])}, access)[0] == 200

    browser.get(f"{server.url}/ui/")
    browser.find_element(By.ID, "email").send_keys(email)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "password-submit").click()
    _status(browser, "Password accepted")
    # The confirming code's step is spent; the next one is inside the accepted window.
    code = _spelled(_totp(pending["secret"], offset=30))
    browser.find_element(By.ID, "mfa-totp").send_keys(code)
    browser.find_element(By.ID, "mfa-totp-submit").click()
    _status(browser, "Signed in.")


def test_two_different_passwords_are_said_so_before_anything_is_sent(server, browser):
    browser.get(f"{server.url}/reset-password?token=rt_not-sent-at-all")
    browser.find_element(By.ID, "new-password").send_keys(NEW_PASSWORD)
    browser.find_element(By.ID, "new-password-again").send_keys(NEW_PASSWORD + "!")
    browser.find_element(By.ID, "reset-submit").click()
    text = _status(browser, "differ")
    assert text == "The two passwords differ: type the same new password twice."
    assert _visible(browser, "reset-view")


def test_the_page_signs_up_and_the_mailed_link_confirms(server, browser):
    """Sign-up on /ui/, the mailed link, then the first sign-in: the whole way on the pages."""
    email = "new-on-the-page@example.com"
    browser.get(f"{server.url}/ui/")
    browser.find_element(By.ID, "signup-open").click()
    assert _visible(browser, "signup-view") and not _visible(browser, "login-view")
    browser.find_element(By.ID, "signup-email").send_keys(email)
    browser.find_element(By.ID, "signup-password").send_keys(PASSWORD)
    browser.find_element(By.ID, "signup-submit").click()
    _status(browser, "Check your mailbox")
    assert browser.execute_script("return document.getElementById('signup-password').value") == ""

    _open(browser, server, _link(server, email, "Confirm your email address", "verify-email"))
    browser.find_element(By.ID, "verify-submit").click()
    _status(browser, "Your email address is confirmed")
    browser.get(f"{server.url}/ui/")
    browser.find_element(By.ID, "email").send_keys(email)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "password-submit").click()
    _status(browser, "Signed in.")


def test_a_forgotten_password_is_reset_from_the_sign_in_page(server, browser):
    email = "forgot-on-the-page@example.com"
    assert _call(server, "/v1/signup", {"email": email, "password": PASSWORD})[0] == 202
    verify = _link(server, email, "Confirm your email address", "verify-email")
    assert _call(server, "/v1/signup/verify", {"token": verify.split("token=")[1]})[0] == 200

    browser.get(f"{server.url}/ui/")
    browser.find_element(By.ID, "forgot").click()
    _status(browser, "Type your email address")  # nothing to send it to yet
    browser.find_element(By.ID, "email").send_keys(email)
    browser.find_element(By.ID, "forgot").click()
    _status(browser, "Check your mailbox")

    _open(browser, server, _link(server, email, "Reset your password", "reset-password"))
    browser.find_element(By.ID, "new-password").send_keys(NEW_PASSWORD)
    browser.find_element(By.ID, "new-password-again").send_keys(NEW_PASSWORD)
    browser.find_element(By.ID, "reset-submit").click()
    _status(browser, "Your password is set")
    status, body = _call(server, "/v1/login", {"email": email, "password": NEW_PASSWORD})
    assert (status, body["status"]) == (200, "authenticated")
