"""GET /v1/me: the profile behind a bearer token, and what the bearer guard refuses."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.tokens import generate_signing_key, sign_access_token
from authsvc.db import utcnow
from authsvc.models import Session, User
from authsvc.services import signing
from tests.conftest import runtime, statements_during

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_me_returns_the_profile(api, client):
    api.register()
    tokens = api.tokens()

    response = client.get("/v1/me", headers=api.bearer(tokens["access_token"]))

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    profile = response.get_json()
    assert profile["email"] == "ada@example.com"
    assert profile["email_verified"] is True
    assert profile["mfa_methods"] == []
    assert profile["password_change_required"] is False
    assert RFC3339_UTC.match(profile["created_at"])
    assert RFC3339_UTC.match(profile["password_set_at"])
    assert isinstance(profile["id"], str) and len(profile["id"]) >= 16
    assert not {"password_hash", "password", "hash"} & set(profile)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic YWRhOnB3",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Token abc",
    ],
)
def test_missing_or_malformed_bearer_tokens_are_refused(client, header):
    headers = {"Authorization": header} if header is not None else {}

    response = client.get("/v1/me", headers=headers)

    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "unauthenticated"
    # RFC 6750 section 3: the challenge names an error only when a bearer token was sent.
    sent = header is not None and header.startswith("Bearer ") and header.strip() != "Bearer"
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="authsvc", error="invalid_token"' if sent else 'Bearer realm="authsvc"'
    )


def forge(app, connection, *, key=None, **overrides) -> str:
    """An access token for the first session, signed with the service's key unless given."""
    settings = runtime(app).settings
    with DbSession(bind=connection, join_transaction_mode="create_savepoint") as session:
        key = key or signing.active_key(session, runtime(app).deps.keyring, now=utcnow())
    claims = {
        "issuer": settings.public_url,
        "audience": settings.jwt_audience,
        "now": utcnow(),
        "ttl_seconds": 600,
        "auth_time": utcnow(),
        "amr": ("pwd",),
        **overrides,
    }
    return sign_access_token(key=key, **claims)


@pytest.fixture
def session_ids(api, client):
    api.register()
    tokens = api.tokens()
    me = client.get("/v1/me", headers=api.bearer(tokens["access_token"])).get_json()
    [session] = client.get(
        "/v1/me/sessions", headers=api.bearer(tokens["access_token"])
    ).get_json()["sessions"]
    return {"subject": me["id"], "session_id": session["id"]}


def test_a_token_forged_here_is_accepted_so_the_forgeries_below_are_meaningful(
    api, app, client, connection, session_ids
):
    token = forge(app, connection, **session_ids)

    assert client.get("/v1/me", headers=api.bearer(token)).status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"now": -timedelta(minutes=11)},  # expired
        {"audience": "another-app"},
        {"issuer": "https://evil.example"},
        {"session_id": "no-such-session"},
        {"subject": "someone-else"},
        {"ttl_seconds": 601},  # longer than the service issues them for
        {"now": timedelta(minutes=2)},  # issued in the future, beyond the leeway
    ],
    ids=["expired", "audience", "issuer", "session", "subject", "lifetime", "future"],
)
def test_invalid_access_tokens_are_refused(api, app, client, connection, session_ids, change):
    # Times are offsets from the moment the test runs, not from collection: a token "two
    # minutes ahead" of a collection long past would be inside the leeway by now.
    if "now" in change:
        change = {**change, "now": utcnow() + change["now"]}
    token = forge(app, connection, **{**session_ids, **change})

    response = client.get("/v1/me", headers=api.bearer(token))

    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="authsvc", error="invalid_token"'


def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(
    api, app, client, connection, session_ids
):
    with DbSession(bind=connection, join_transaction_mode="create_savepoint") as session:
        kid = signing.active_key(session, runtime(app).deps.keyring, now=utcnow()).kid
    impostor = generate_signing_key(kid)

    token = forge(app, connection, key=impostor, **session_ids)

    assert client.get("/v1/me", headers=api.bearer(token)).status_code == 401


def test_a_disabled_user_is_refused(api, client, connection):
    api.register()
    tokens = api.tokens()
    connection.execute(update(User).values(disabled_at=utcnow()))

    response = client.get("/v1/me", headers=api.bearer(tokens["access_token"]))

    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthenticated"


@pytest.mark.parametrize("path", ["/v1/me", "/v1/me/sessions"])
def test_a_revoked_session_is_refused_on_the_very_next_request(api, client, path):
    api.register()
    tokens = api.tokens()
    headers = api.bearer(tokens["access_token"])
    assert client.get(path, headers=headers).status_code == 200

    client.post("/v1/logout", json={"refresh_token": tokens["refresh_token"]})

    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthenticated"


@pytest.mark.parametrize("path", ["/v1/me", "/v1/me/sessions"])
def test_an_expired_session_or_disabled_user_is_refused_on_the_next_request(
    api, client, connection, path
):
    api.register()
    headers = api.bearer(api.tokens()["access_token"])
    assert client.get(path, headers=headers).status_code == 200

    connection.execute(update(Session).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert client.get(path, headers=headers).status_code == 401
    connection.execute(update(Session).values(expires_at=utcnow() + timedelta(days=1)))
    assert client.get(path, headers=headers).status_code == 200
    connection.execute(update(User).values(disabled_at=utcnow()))
    assert client.get(path, headers=headers).status_code == 401


def test_me_is_one_statement_once_the_key_is_known(api, client, connection):
    api.register()
    headers = api.bearer(api.tokens()["access_token"])
    assert client.get("/v1/me", headers=headers).status_code == 200

    responses = []
    seen = statements_during(
        connection, lambda: responses.append(client.get("/v1/me", headers=headers))
    )

    assert responses[0].status_code == 200
    assert len(seen) == 1, seen


def test_a_token_of_an_unknown_kid_is_refused_and_then_a_new_key_is_found(
    api, app, client, connection, session_ids
):
    stranger = generate_signing_key("kid-nobody-published")
    assert (
        client.get(
            "/v1/me", headers=api.bearer(forge(app, connection, key=stranger, **session_ids))
        ).status_code
        == 401
    )

    with DbSession(bind=connection, join_transaction_mode="create_savepoint") as session:
        new_kid = signing.rotate(session, runtime(app).deps.keyring, now=utcnow()).kid
        session.commit()
        fresh = signing.active_key(session, runtime(app).deps.keyring, now=utcnow())
    assert fresh.kid == new_kid

    token = forge(app, connection, key=fresh, **session_ids)
    assert client.get("/v1/me", headers=api.bearer(token)).status_code == 200


@pytest.mark.parametrize("kid", ["\ud800", "\u0000", "x" * 65, "../keys"])
def test_a_key_id_that_is_no_id_of_ours_is_refused_before_any_lookup(client, kid):
    # The kid is looked up by value: a lone surrogate or a NUL used to reach the database
    # (a 500 on either backend) before anything about the token was checked.
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    token = ".".join(
        (part({"alg": "EdDSA", "typ": "at+jwt", "kid": kid}), part({"sub": "x"}), "c2ln")
    )

    response = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})

    assert (response.status_code, response.get_json()["code"]) == (401, "unauthenticated")
