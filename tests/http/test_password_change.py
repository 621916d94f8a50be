"""POST /v1/password/change: with a bearer token and the current password, or a change_token."""

from __future__ import annotations

import pytest
from limits import parse
from sqlalchemy import select, update

from authsvc.db import utcnow
from authsvc.models import AuditEvent, User
from tests.conftest import runtime

PASSWORD = "correct horse 42"
NEW_PASSWORD = "brand new horse 43"
COMMON = "qwerty123456"  # in the shipped list of common passwords


def change(api, access_token: str | None, **body):
    headers = api.bearer(access_token) if access_token else {}
    return api.client.post("/v1/password/change", json=body, headers=headers)


def test_change_with_the_current_password(api, mailbox):
    api.register()
    tokens = api.tokens()

    response = change(
        api, tokens["access_token"], current_password=PASSWORD, new_password=NEW_PASSWORD
    )

    assert response.status_code == 204
    assert api.login("ada@example.com", NEW_PASSWORD).get_json()["status"] == "authenticated"
    assert api.login("ada@example.com", PASSWORD).status_code == 401
    api.drain()
    assert mailbox.last("ada@example.com")["Subject"] == "Your password was changed"


def test_change_revokes_every_session_including_the_current_one(api, client):
    api.register()
    current, other = api.tokens(), api.tokens()

    change(api, current["access_token"], current_password=PASSWORD, new_password=NEW_PASSWORD)

    for tokens in (current, other):
        assert client.get("/v1/me", headers=api.bearer(tokens["access_token"])).status_code == 401
        refreshed = client.post(
            "/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.get_json()["code"] == "invalid_token"


def test_a_wrong_current_password_is_refused_and_audited(api, connection):
    api.register()
    tokens = api.tokens()

    response = change(
        api, tokens["access_token"], current_password="wrong horse 42", new_password=NEW_PASSWORD
    )

    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_credentials"
    assert api.login("ada@example.com", PASSWORD).status_code == 200
    outcomes = connection.scalars(
        select(AuditEvent.outcome).where(AuditEvent.type == "password.change")
    ).all()
    assert outcomes == ["wrong_password"]


def test_a_password_invalidated_by_a_breach_response_cannot_be_changed_with(api, connection):
    # Sessions kept (revoke_sessions=false): only the mailed link may replace the password.
    api.register()
    tokens = api.tokens()
    connection.execute(
        update(User).where(User.email == "ada@example.com").values(password_invalidated_at=utcnow())
    )

    response = change(
        api, tokens["access_token"], current_password=PASSWORD, new_password=NEW_PASSWORD
    )

    assert (response.status_code, response.get_json()["code"]) == (401, "invalid_credentials")
    assert api.login("ada@example.com", NEW_PASSWORD).status_code == 401
    outcomes = connection.scalars(
        select(AuditEvent.outcome).where(AuditEvent.type == "password.change")
    ).all()
    assert outcomes == ["password_invalidated"]


@pytest.fixture
def two_failures_a_day(app):
    limiter = runtime(app).deps.limiter
    limiter._items["account_failures"] = parse("2/day")
    return limiter


def test_refusals_of_the_failure_cap_are_audited(api, connection, two_failures_a_day):
    api.register()
    tokens = api.tokens()
    wrong = {"current_password": "wrong horse 42", "new_password": NEW_PASSWORD}

    statuses = [change(api, tokens["access_token"], **wrong).status_code for _ in range(2)]

    assert statuses == [401, 429]  # the login's own check counted as well: 2 checks a day
    hits = connection.execute(
        select(AuditEvent.outcome, AuditEvent.details).where(AuditEvent.type == "ratelimit.hit")
    ).all()
    assert len(hits) == 1
    assert hits[0].outcome == "account_failures"
    assert "password_change" in str(hits[0].details)


def test_the_current_password_needs_a_bearer_token(api):
    api.register()

    response = change(api, None, current_password=PASSWORD, new_password=NEW_PASSWORD)

    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthenticated"
    assert api.login("ada@example.com", PASSWORD).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"new_password": NEW_PASSWORD},
        {"new_password": NEW_PASSWORD, "current_password": PASSWORD, "change_token": "ct_x"},
    ],
    ids=["neither", "both"],
)
def test_exactly_one_proof_is_required(api, body):
    api.register()
    tokens = api.tokens()

    response = change(api, tokens["access_token"], **body)

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        (COMMON, "breached"),
        ("short", "too_short"),
        ("z" * 257, "too_long"),
        ("my example horse 42", "context_word"),
    ],
)
def test_weak_new_passwords_are_refused(api, password, reason):
    api.register()
    tokens = api.tokens()

    response = change(api, tokens["access_token"], current_password=PASSWORD, new_password=password)

    assert response.status_code == 400
    assert response.get_json()["code"] == "weak_password"
    assert response.get_json()["reason"] == reason
    assert api.login("ada@example.com", PASSWORD).status_code == 200


def use_common_password(app, connection) -> None:
    """As if the account predates the blocklist: its password is now a common one."""
    hashed = runtime(app).deps.hasher.hash(COMMON)
    connection.execute(update(User).values(password_hash=hashed))


def test_a_blocklisted_password_must_be_changed_after_login(api, app, connection):
    api.register()
    use_common_password(app, connection)

    response = api.login("ada@example.com", COMMON)

    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "password_change_required"
    assert set(body) == {"status", "change_token"}
    assert body["change_token"].startswith("ct_")
    assert "password.breached_at_login" in connection.scalars(select(AuditEvent.type)).all()

    changed = change(api, None, change_token=body["change_token"], new_password=NEW_PASSWORD)

    assert changed.status_code == 204
    assert api.login("ada@example.com", NEW_PASSWORD).get_json()["status"] == "authenticated"
    assert connection.scalar(select(User.password_change_required)) is False


def test_a_change_token_works_once(api, app, connection):
    api.register()
    use_common_password(app, connection)
    token = api.login("ada@example.com", COMMON).get_json()["change_token"]
    assert change(api, None, change_token=token, new_password=NEW_PASSWORD).status_code == 204

    again = change(api, None, change_token=token, new_password="third horse 44")

    assert again.status_code == 400
    assert again.get_json()["code"] == "invalid_token"


def test_a_change_token_survives_a_weak_choice(api, app, connection):
    api.register()
    use_common_password(app, connection)
    token = api.login("ada@example.com", COMMON).get_json()["change_token"]

    weak = change(api, None, change_token=token, new_password=COMMON)

    assert weak.get_json()["code"] == "weak_password"
    assert change(api, None, change_token=token, new_password=NEW_PASSWORD).status_code == 204


@pytest.mark.parametrize("token", ["ct_unknown", "rp_unknown", ""])
def test_unknown_change_tokens_are_refused(client, token):
    response = client.post(
        "/v1/password/change", json={"change_token": token, "new_password": NEW_PASSWORD}
    )

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_token"
