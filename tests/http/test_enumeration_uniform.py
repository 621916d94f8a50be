"""Nobody learns which emails are registered: signup, login and forgot answer every account
state with the same status, the same body bytes and the same headers, after the same database
and outbox work. (Timing is measured against a real server in tests/e2e.)"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from authsvc.app import create_app
from authsvc.db import utcnow
from authsvc.models import AuditEvent, OutboxMessage, User
from tests.conftest import ContractClient, replace_settings, runtime

PASSWORD = "correct horse 42"
VARYING_HEADERS = {"date", "x-request-id"}


@pytest.fixture
def accounts(api, connection) -> dict[str, str]:
    """One email per account state."""
    api.register("registered@example.com", PASSWORD)
    api.signup("unverified@example.com", PASSWORD)
    api.register("disabled@example.com", PASSWORD)
    connection.execute(
        update(User).where(User.email == "disabled@example.com").values(disabled_at=utcnow())
    )
    api.mailbox.directory.mkdir(parents=True, exist_ok=True)
    for path in api.mailbox.directory.glob("*.eml"):
        path.unlink()
    return {
        "registered": "registered@example.com",
        "unverified": "unverified@example.com",
        "disabled": "disabled@example.com",
        "unknown": "unknown@example.com",
    }


def fingerprint(response) -> tuple:
    headers = sorted(
        (k.lower(), v) for k, v in response.headers.items() if k.lower() not in VARYING_HEADERS
    )
    return response.status_code, response.get_data(), headers


def counts(connection) -> tuple[int, int]:
    return (
        connection.scalar(select(func.count()).select_from(OutboxMessage)),
        connection.scalar(select(func.count()).select_from(AuditEvent)),
    )


def send(client, connection, path: str, body: dict) -> tuple[tuple, tuple[int, int]]:
    """The response fingerprint and how many outbox and audit rows the request wrote."""
    outbox_before, audit_before = counts(connection)
    response = client.post(path, json=body)
    outbox_after, audit_after = counts(connection)
    return fingerprint(response), (outbox_after - outbox_before, audit_after - audit_before)


def assert_uniform(results: dict[str, tuple[tuple, tuple[int, int]]]) -> None:
    (reference_name, reference), *others = results.items()
    for name, result in others:
        assert result[0] == reference[0], f"{name} answers differently from {reference_name}"
        assert result[1] == reference[1], f"{name} does other work than {reference_name}"


def test_signup_answers_every_account_state_alike(client, connection, accounts):
    results = {
        state: send(client, connection, "/v1/signup", {"email": email, "password": PASSWORD})
        for state, email in accounts.items()
    }

    assert_uniform(results)
    status, body, _ = results["unknown"][0]
    assert (status, body) == (202, b'{"status": "verification_sent"}')
    assert results["unknown"][1] == (1, 1)


def test_login_failures_answer_every_account_state_alike(client, connection, accounts):
    attempts = {
        "wrong_password": (accounts["registered"], "wrong horse 42"),
        "unknown": (accounts["unknown"], PASSWORD),
        "unverified": (accounts["unverified"], PASSWORD),
        "disabled": (accounts["disabled"], PASSWORD),
        "upper_case": (accounts["registered"].upper(), "wrong horse 42"),
    }

    results = {
        state: send(client, connection, "/v1/login", {"email": email, "password": password})
        for state, (email, password) in attempts.items()
    }

    assert_uniform(results)
    status, body, headers = results["unknown"][0]
    assert status == 401
    assert body == (
        b'{"type": "https://authsvc.dev/problems/invalid_credentials", '
        b'"title": "Invalid credentials", "status": 401, '
        b'"detail": "Invalid credentials", "code": "invalid_credentials"}'
    )
    assert ("content-type", "application/problem+json") in headers
    assert results["unknown"][1] == (0, 1)


def test_a_password_invalidated_account_answers_like_a_wrong_password(client, connection, accounts):
    connection.execute(
        update(User)
        .where(User.email == accounts["registered"])
        .values(password_invalidated_at=utcnow())
    )

    right = send(
        client, connection, "/v1/login", {"email": accounts["registered"], "password": PASSWORD}
    )
    unknown = send(
        client, connection, "/v1/login", {"email": accounts["unknown"], "password": PASSWORD}
    )

    assert right == unknown


def test_forgot_answers_every_account_state_alike(client, connection, accounts):
    results = {
        state: send(client, connection, "/v1/password/forgot", {"email": email})
        for state, email in accounts.items()
    }

    assert_uniform(results)
    status, body, _ = results["unknown"][0]
    assert (status, body) == (202, b'{"status": "reset_sent"}')
    assert results["unknown"][1] == (1, 1)


@pytest.mark.parametrize("path", ["/v1/signup", "/v1/password/forgot"])
def test_the_mailbox_limit_answers_every_account_state_alike(settings, connection, accounts, path):
    # The per-mailbox limit counts before anything looks at the account: another spelling of
    # each address (a +tag) is refused alike once its mailbox had its mail.
    app = create_app(replace_settings(settings, limit_email="1/minute"), bind=connection)
    app.test_client_class = ContractClient
    runtime(app).deps.limiter.reset()
    client = app.test_client()

    def body(email: str) -> dict:
        return {"email": email, "password": PASSWORD} if path == "/v1/signup" else {"email": email}

    results = {}
    for state, email in accounts.items():
        local, _, domain = email.partition("@")
        assert client.post(path, json=body(email)).status_code == 202
        results[state] = send(client, connection, path, body(f"{local}+again@{domain}"))
    runtime(app).deps.limiter.reset()

    # Retry-After counts down a window that each address opened just before: it may tick
    # between two answers, and says nothing else.
    waits = [int(dict(headers)["retry-after"]) for (_, _, headers), _ in results.values()]
    assert min(waits) >= 1 and max(waits) <= 60
    assert max(waits) - min(waits) <= 1
    assert_uniform(
        {
            state: ((status, data, [h for h in headers if h[0] != "retry-after"]), work)
            for state, ((status, data, headers), work) in results.items()
        }
    )
    status, data, _ = results["unknown"][0]
    assert status == 429
    assert data == (
        b'{"type": "https://authsvc.dev/problems/rate_limited", '
        b'"title": "Too many requests", "status": 429, '
        b'"detail": "Too many requests; retry later", "code": "rate_limited"}'
    )
    assert results["unknown"][1] == (0, 1)  # the ratelimit.hit event, nothing queued


def test_weak_password_answers_do_not_depend_on_the_account(client, connection, accounts):
    results = {
        state: send(client, connection, "/v1/signup", {"email": email, "password": "short"})
        for state, email in accounts.items()
    }

    assert_uniform(results)
    assert results["unknown"][0][0] == 400


def test_only_the_mailbox_tells_the_cases_apart(api, client, mailbox, accounts):
    for email in (accounts["registered"], accounts["unknown"]):
        client.post("/v1/password/forgot", json={"email": email})
        api.drain()
        client.post("/v1/signup", json={"email": email, "password": PASSWORD})
        api.drain()

    registered = [m["Subject"] for m in mailbox.messages(accounts["registered"])]
    unknown = [m["Subject"] for m in mailbox.messages(accounts["unknown"])]

    assert sorted(registered) == ["Reset your password", "Sign-up attempt for your account"]
    assert sorted(unknown) == ["Confirm your email address", "Password reset request"]
