"""Security keys and passkeys through the /ui page in headless Chromium, against a real server.

Chromium's virtual authenticator (a CTAP2 USB key with resident keys and user verification)
stands in for the hardware; everything else is real: the browser's WebAuthn client, the page's
JavaScript, gunicorn, PostgreSQL, Redis and the outbox worker. The cloned-key case copies the
credential out of the authenticator (private key and counter) right after registration and later
imports that copy into a second authenticator, exactly what a cloned key is.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.virtual_authenticator import (
    Credential,
    Protocol,
    Transport,
    VirtualAuthenticatorOptions,
)
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.server import LiveServer

pytestmark = pytest.mark.e2e

EMAIL = "grace@example.com"
PASSWORD = "correct horse 42"


def _create_user(server: LiveServer, email: str) -> None:
    request = urllib.request.Request(
        f"{server.url}/admin/v1/users",
        method="POST",
        data=json.dumps({"email": email, "password": PASSWORD}).encode(),
        headers={"Authorization": f"Bearer {server.admin_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


def _key() -> VirtualAuthenticatorOptions:
    return VirtualAuthenticatorOptions(
        protocol=Protocol.CTAP2,
        transport=Transport.USB,
        has_resident_key=True,
        has_user_verification=True,
        is_user_consenting=True,
        is_user_verified=True,
    )


def _status(driver: WebDriver, expected: str, timeout: float = 20) -> str:
    """Wait until the page's status line contains ``expected``; return it."""
    try:
        WebDriverWait(driver, timeout).until(
            lambda d: expected in d.find_element(By.ID, "status").text
        )
    except TimeoutException:
        raise AssertionError(
            f"status never showed {expected!r}; it shows "
            f"{driver.find_element(By.ID, 'status').text!r}"
        ) from None
    return str(driver.find_element(By.ID, "status").text)


def _visible(driver: WebDriver, element_id: str) -> bool:
    return bool(driver.find_element(By.ID, element_id).is_displayed())


def _sign_in_with_password(driver: WebDriver, email: str = EMAIL) -> None:
    driver.find_element(By.ID, "email").clear()
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "password").clear()
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "password-submit").click()


def _sign_out(driver: WebDriver) -> None:
    driver.find_element(By.ID, "logout").click()
    _status(driver, "Signed out.")
    assert _visible(driver, "login-view")


def _sign_in_with_app(driver: WebDriver, email: str, secret: str) -> None:
    """Sign in with the password, then the app's code: the page asks for the app alone."""
    _sign_in_with_password(driver, email)
    _status(driver, "Password accepted")
    assert _visible(driver, "mfa-totp-form") and not _visible(driver, "mfa-webauthn")
    # The confirming code's time step is spent; the next step is within the accepted window.
    driver.find_element(By.ID, "mfa-totp").send_keys(_totp(secret, offset=30))
    driver.find_element(By.ID, "mfa-totp-submit").click()
    _status(driver, "Signed in.")
    assert _amr(driver) == "pwd otp mfa"


def _amr(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "account-amr").text)


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _query(server: LiveServer, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(server.database_url()) as conn:
        return list(conn.execute(sql).fetchall())


def _wait_for_mail(server: LiveServer, subject: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in server.mails():
            if message["Subject"] == subject and message["To"] == EMAIL:
                return str(message.get_content())
        time.sleep(0.1)
    raise AssertionError(f"no mail {subject!r} to {EMAIL}")


def _totp(secret: str, offset: int = 0) -> str:
    result = subprocess.run(
        ["oathtool", "--totp", "-b", f"--now=now {offset:+d} seconds", secret],
        capture_output=True,
        check=True,
        text=True,
        timeout=10,
    )
    return result.stdout.strip()


def test_security_key_and_passkey_in_a_real_browser(server: LiveServer, browser: WebDriver):
    driver = browser
    _create_user(server, EMAIL)
    driver.get(f"{server.url}/ui/")
    assert (
        driver.execute_script("return typeof PublicKeyCredential.parseCreationOptionsFromJSON")
        == "function"
    )

    # 1. Password alone (no factor yet), then register a key that is also a passkey.
    _sign_in_with_password(driver)
    _status(driver, "Signed in.")
    assert _amr(driver) == "pwd"
    driver.add_virtual_authenticator(_key())
    name = driver.find_element(By.ID, "key-name")
    name.clear()
    name.send_keys("Blue key")
    driver.find_element(By.ID, "add-key").click()
    assert 'passkey (also signs in without a password) "Blue key"' in _status(driver, "Added")
    # The factor list says so too, as long as the key is there.
    WebDriverWait(driver, 10).until(
        lambda d: (
            "Blue key — passkey (also signs in without a password)"
            in d.find_element(By.ID, "factor-list").text
        )
    )
    ((stored_name, discoverable, user_verified, backup_eligible, count),) = _query(
        server,
        "SELECT name, discoverable, user_verified, backup_eligible, sign_count "
        "FROM webauthn_credentials",
    )
    assert (stored_name, discoverable, user_verified, backup_eligible) == (
        "Blue key",
        True,
        True,
        False,
    )
    codes = driver.find_element(By.ID, "recovery-codes-list").text.split()
    assert _visible(driver, "recovery-codes") and len(codes) >= 8  # the first factor's set
    (exported,) = driver.get_credentials()  # the future clone: key material and counter now
    assert exported.sign_count == count
    assert "security key or passkey" in _wait_for_mail(
        server, "A second factor was added to your account"
    )

    # 2. Log out; password, then the key as second factor.
    _sign_out(driver)
    _sign_in_with_password(driver)
    _status(driver, "Password accepted")
    assert _visible(driver, "mfa-webauthn")
    driver.find_element(By.ID, "mfa-key").click()
    _status(driver, "Signed in.")
    assert _amr(driver) == "pwd hwk mfa"
    assert driver.find_element(By.ID, "account-email").text == EMAIL

    # 3. Log out; the passkey alone: no email, no password.
    _sign_out(driver)
    driver.find_element(By.ID, "email").clear()
    driver.find_element(By.ID, "passkey-login").click()
    _status(driver, "Signed in.")
    assert _amr(driver) == "hwk mfa"
    ((count_after,),) = _query(server, "SELECT sign_count FROM webauthn_credentials")
    assert count_after > exported.sign_count

    # 4. A clone of the key, made before its last two uses, shows up with a lower counter.
    _sign_out(driver)
    driver.remove_virtual_authenticator()
    driver.add_virtual_authenticator(_key())
    driver.add_credential(
        Credential.create_resident_credential(
            id=_b64(exported.id),
            rp_id="localhost",
            user_handle=_b64(exported.user_handle or ""),
            private_key=_b64(exported.private_key),
            sign_count=exported.sign_count,
        )
    )
    driver.find_element(By.ID, "passkey-login").click()
    assert "invalid_credentials" in _status(driver, "invalid_credentials")
    assert _visible(driver, "login-view")
    events = _query(
        server,
        "SELECT outcome, details FROM audit_events WHERE type = 'mfa.webauthn.counter_regression'",
    )
    assert len(events) == 1 and events[0][0] == "rejected"
    assert json.loads(str(events[0][1]))["stored"] == count_after
    body = _wait_for_mail(server, "Your security key may have been copied")
    # The key by the day it was added, never by the name a session gave it.
    ((added,),) = _query(server, "SELECT created_at FROM webauthn_credentials")
    assert f"added on {added:%Y-%m-%d}" in body and "refused" in body
    assert "Blue key" not in body
    ((count_final,),) = _query(server, "SELECT sign_count FROM webauthn_credentials")
    assert count_final == count_after  # the clone moved nothing


def test_authenticator_app_through_the_page(server: LiveServer, browser: WebDriver):
    """The page's TOTP enrollment: the QR code from qr_svg renders, oathtool answers."""
    driver = browser
    email = "ada@example.com"
    _create_user(server, email)
    driver.get(f"{server.url}/ui/")
    _sign_in_with_password(driver, email)
    _status(driver, "Signed in.")
    driver.find_element(By.ID, "add-totp").click()
    _status(driver, "Scan the code")
    qr = driver.find_element(By.ID, "totp-qr")
    assert qr.get_attribute("src").startswith("data:image/svg+xml;base64,")
    assert driver.execute_script("return arguments[0].naturalWidth", qr) > 0  # it rendered
    secret = driver.find_element(By.ID, "totp-secret").text
    driver.find_element(By.ID, "totp-code").send_keys(_totp(secret))
    driver.find_element(By.ID, "totp-confirm").click()
    _status(driver, "Authenticator app added.")
    assert _visible(driver, "recovery-codes")
    codes = driver.find_element(By.ID, "recovery-codes-list").text.split()
    assert codes and secret
    _sign_out(driver)
    # Signed out, the page keeps nothing of the account for the next person at the computer.
    page = driver.page_source
    assert secret not in page and not [code for code in codes if code in page]
    assert email not in page and not driver.find_element(By.ID, "totp-qr").get_attribute("src")
    _sign_in_with_app(driver, email, secret)


def test_the_page_lists_the_sessions_and_signs_out_everywhere_else(
    server: LiveServer, browser: WebDriver
):
    driver = browser
    email = "kay@example.com"
    _create_user(server, email)
    # Another device's session, through the API.
    login = urllib.request.Request(
        f"{server.url}/v1/login",
        method="POST",
        data=json.dumps({"email": email, "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "Phone/1.0"},
    )
    with urllib.request.urlopen(login, timeout=10) as response:
        phone = json.loads(response.read())
    driver.get(f"{server.url}/ui/")
    _sign_in_with_password(driver, email)
    _status(driver, "Signed in.")

    items = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#session-list li")]
    assert len(items) == 2
    assert "(this browser)" in items[0] and "HeadlessChrome" in items[0]
    assert items[1].startswith("Phone/1.0 at 127.0.0.1") and "(this browser)" not in items[1]
    # When, in the reader's words and time zone: not the API's ISO 8601 timestamp.
    assert not [item for item in items if re.search(r"\d{4}-\d\d-\d\dT\d\d:", item)], items

    driver.find_element(By.ID, "logout-others").click()
    _status(driver, "Signed out everywhere else (1 session).")

    items = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#session-list li")]
    assert len(items) == 1 and "(this browser)" in items[0]
    assert not driver.find_element(By.ID, "logout-others").is_enabled()
    me = urllib.request.Request(
        f"{server.url}/v1/me", headers={"Authorization": f"Bearer {phone['access_token']}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(me, timeout=10)
    refused.value.close()
    assert refused.value.code == 401
    _sign_out(driver)
    assert not driver.find_elements(By.CSS_SELECTOR, "#session-list li")


@pytest.fixture(scope="module")
def mfa_required_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with AUTHSVC_REQUIRE_MFA: a login without a factor must add one first."""
    live = LiveServer(tmp_path_factory.mktemp("mfa_required"), host="localhost", workers=2)
    live.env["AUTHSVC_REQUIRE_MFA"] = "true"
    live.env["AUTHSVC_WEBAUTHN_RP_ID"] = "localhost"
    live.env["AUTHSVC_WEBAUTHN_ORIGINS"] = f"http://localhost:{live.port}"
    with live:
        yield live


def _scan_qr(driver: WebDriver, element_id: str, tmp_path: Path) -> str:
    """What a phone's camera reads off the page: zbarimg on a screenshot of the QR code."""
    shot = tmp_path / "qr.png"
    code = driver.find_element(By.ID, element_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", code)
    assert code.screenshot(str(shot))
    result = subprocess.run(
        ["zbarimg", "-q", "--raw", str(shot)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_forced_enrollment_adds_an_authenticator_app_on_the_page(
    mfa_required_server: LiveServer, browser: WebDriver, tmp_path: Path
):
    """With AUTHSVC_REQUIRE_MFA, a person with no security key or passkey finishes signing in
    by adding an authenticator app with the enrollment token, on the same setup the account
    view uses; cancelling a setup leaves nothing of its secret in the page."""
    server, driver = mfa_required_server, browser
    email = "noor@example.com"
    _create_user(server, email)
    driver.get(f"{server.url}/ui/")  # no virtual authenticator: this person has no key
    _sign_in_with_password(driver, email)
    _status(driver, "Add a second factor to continue.")
    assert _visible(driver, "enroll-view") and _visible(driver, "enroll-totp")

    driver.find_element(By.ID, "enroll-totp").click()
    _status(driver, "Scan the code")
    abandoned = driver.find_element(By.ID, "totp-secret").text
    driver.find_element(By.ID, "enroll-cancel").click()
    assert _visible(driver, "login-view") and abandoned not in driver.page_source

    _sign_in_with_password(driver, email)
    _status(driver, "Add a second factor to continue.")
    driver.find_element(By.ID, "enroll-totp").click()
    _status(driver, "Scan the code")
    assert _visible(driver, "totp-setup") and not _visible(driver, "account-view")
    uri = urllib.parse.urlsplit(_scan_qr(driver, "totp-qr", tmp_path))
    (secret,) = urllib.parse.parse_qs(uri.query)["secret"]
    assert uri.scheme == "otpauth" and secret == driver.find_element(By.ID, "totp-secret").text
    driver.find_element(By.ID, "totp-code").send_keys(_totp(secret))
    driver.find_element(By.ID, "totp-confirm").click()
    _status(driver, "Authenticator app added.")
    assert _visible(driver, "account-view") and not _visible(driver, "totp-setup")
    assert _amr(driver) == "pwd otp mfa"
    assert driver.find_element(By.ID, "account-email").text == email
    assert _visible(driver, "recovery-codes")
    assert len(driver.find_element(By.ID, "recovery-codes-list").text.split()) == 10
    assert secret not in driver.page_source  # the setup is over: its secret is gone
    assert _query(server, "SELECT name FROM totp_factors WHERE confirmed_at IS NOT NULL") == [
        ("Authenticator app",)
    ]

    # The app is the account's second factor from now on.
    _sign_out(driver)
    _sign_in_with_app(driver, email, secret)


@pytest.mark.parametrize("email", ["jörg@example.com", "ada@exämple.com"])
def test_an_internationalised_address_signs_in_through_the_page(
    server: LiveServer, browser: WebDriver, email: str
):
    """The API takes addresses with non-ASCII local parts and domains as they are; the page
    must send them so too, not refuse them or turn the domain into its punycode form (another
    address, with no account)."""
    driver = browser
    _create_user(server, email)
    driver.get(f"{server.url}/ui/")
    _sign_in_with_password(driver, email)
    _status(driver, "Signed in.")
    assert driver.find_element(By.ID, "account-email").text == email


def _admin(server: LiveServer, method: str, path: str, body: dict[str, object] | None = None):
    request = urllib.request.Request(
        f"{server.url}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {server.admin_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_a_password_that_must_change_is_changed_on_the_page(server: LiveServer, browser: WebDriver):
    """A login whose password must change (a breach response in change_at_next_login mode,
    no mail sent) gets a change_token: the page asks for a new password there, instead of
    pointing at a reset link that nobody mailed, and the new one signs in."""
    driver = browser
    email = "lin@example.com"
    user = _admin(server, "POST", "/admin/v1/users", {"email": email, "password": PASSWORD})
    _admin(
        server,
        "POST",
        f"/admin/v1/users/{user['id']}/force-reset",
        {"mode": "change_at_next_login", "notify": False},
    )
    driver.get(f"{server.url}/ui/")
    _sign_in_with_password(driver, email)
    _status(driver, "Choose a new one")
    assert _visible(driver, "change-view") and not _visible(driver, "login-view")
    # A password manager saves the new password for the account it signs in to: the form
    # names it, in a field nobody sees.
    username = driver.find_element(By.CSS_SELECTOR, '#change-form [autocomplete="username"]')
    assert username.get_attribute("value") == email and not username.is_displayed()

    driver.find_element(By.ID, "new-password").send_keys("password123")  # a common password
    driver.find_element(By.ID, "change-submit").click()
    _status(driver, "weak_password")
    assert _visible(driver, "change-view")

    new = "a fresh passphrase for lin 58"
    driver.find_element(By.ID, "new-password").clear()
    driver.find_element(By.ID, "new-password").send_keys(new)
    driver.find_element(By.ID, "change-submit").click()
    _status(driver, "Password changed")
    assert _visible(driver, "login-view")
    driver.find_element(By.ID, "password").send_keys(new)
    driver.find_element(By.ID, "password-submit").click()
    _status(driver, "Signed in.")
    assert driver.find_element(By.ID, "account-email").text == email
