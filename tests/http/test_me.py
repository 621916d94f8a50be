"""GET /v1/me: the profile behind a bearer token, and what the bearer guard refuses."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.tokens import generate_signing_key, sign_access_token
from authsvc.db import utcnow
from authsvc.models import User
from authsvc.services import signing
from tests.conftest import runtime

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
        {"now": utcnow() - timedelta(minutes=11)},  # expired
        {"audience": "another-app"},
        {"issuer": "https://evil.example"},
        {"session_id": "no-such-session"},
        {"subject": "someone-else"},
    ],
    ids=["expired", "audience", "issuer", "session", "subject"],
)
def test_invalid_access_tokens_are_refused(api, app, client, connection, session_ids, change):
    token = forge(app, connection, **{**session_ids, **change})

    response = client.get("/v1/me", headers=api.bearer(token))

    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthenticated"


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
