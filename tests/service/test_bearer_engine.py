"""The bearer and refresh paths on an app with its own engine and real commits (no outer
test transaction): on PostgreSQL GET /v1/me reads in autocommit mode, and pooled
connections that the server dropped are replaced before use, without a round trip."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from flask import Flask
from sqlalchemy import event, text

from authsvc.schema import upgrade
from authsvc.services import signing
from tests.service.conftest import PASSWORD, app_with_ada


@pytest.fixture
def app(settings, scratch_database_url) -> Iterator[Flask]:
    upgrade(scratch_database_url)
    yield from app_with_ada(settings, scratch_database_url)


def login(client) -> dict[str, str]:
    response = client.post("/v1/login", json={"email": "ada@example.com", "password": PASSWORD})
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


@contextmanager
def statements_sent(app: Flask) -> Iterator[list[tuple[str, bool]]]:
    """(first word, autocommit) of each statement the app sends: on PostgreSQL recorded at the
    driver's cursor, which both SQLAlchemy and the autocommit pool's direct path use."""
    seen: list[tuple[str, bool]] = []
    engine = app.extensions["authsvc"].engine
    if engine.dialect.name == "postgresql":
        original = psycopg.Cursor.execute

        def execute(cursor, query, *args, **kwargs):
            seen.append((str(query).split()[0], cursor.connection.autocommit))
            return original(cursor, query, *args, **kwargs)

        psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        try:
            yield seen
        finally:
            psycopg.Cursor.execute = original  # type: ignore[method-assign]
        return

    def record(_conn, _cursor, statement, *_args):
        seen.append((statement.split()[0], False))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_me_refresh_and_revocation_with_real_commits(app):
    client = app.test_client()
    engine = app.extensions["authsvc"].engine
    tokens = login(client)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get("/v1/me", headers=headers).status_code == 200  # the key is now known

    with statements_sent(app) as seen:
        me = client.get("/v1/me", headers=headers)

    assert me.status_code == 200
    assert me.get_json()["email"] == "ada@example.com"
    if engine.dialect.name == "postgresql":
        assert seen == [("SELECT", True)]  # one read in autocommit: no BEGIN, no COMMIT
    else:
        assert seen == [("BEGIN", False), ("SELECT", False)]
    fresh = client.post("/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert fresh.status_code == 200
    again = client.post("/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert again.get_json()["code"] == "invalid_token"
    # The reuse revoked the session, committed: both access tokens die at once.
    for token in (tokens["access_token"], fresh.get_json()["access_token"]):
        refused = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401
    with engine.connect() as conn:
        reason = conn.execute(text("SELECT revoked_reason FROM sessions")).scalar_one()
    assert reason == "refresh_token_reuse"


def test_connections_the_database_dropped_are_replaced(app, scratch_database_url, monkeypatch):
    if not scratch_database_url.startswith("postgresql"):
        pytest.skip("a server that drops connections: PostgreSQL")
    client = app.test_client()
    engine = app.extensions["authsvc"].engine
    tokens = login(client)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get("/v1/me", headers=headers).status_code == 200

    name = scratch_database_url.rsplit("/", 1)[1]
    with psycopg.connect(scratch_database_url.rsplit("/", 1)[0] + "/postgres") as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
    pings: list[object] = []
    monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(conn) or True)

    assert client.get("/v1/me", headers=headers).status_code == 200
    refreshed = client.post("/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200
    assert pings == []  # found out from the socket, not by a round trip


def test_a_refresh_is_one_statement_and_a_spent_token_still_revokes(app, monkeypatch):
    client = app.test_client()
    engine = app.extensions["authsvc"].engine
    tokens = login(client)
    # The autocommit pool's first connection asks the server about itself: not counted below.
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get("/v1/me", headers=headers).status_code == 200

    with statements_sent(app) as seen:
        fresh = client.post("/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert fresh.status_code == 200
    if engine.dialect.name == "postgresql":
        assert seen == [("WITH", True)]  # spend, touch and store in one autocommit statement
    # The cached signing key expires: it is read again, and that read does not get in the
    # way of the transaction that handles the reuse.
    later = time.monotonic() + signing.ACTIVE_KEY_TTL_SECONDS + 1
    monkeypatch.setattr(signing.time, "monotonic", lambda: later)

    reused = client.post("/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]})

    assert reused.status_code == 400
    assert reused.get_json()["code"] == "invalid_token"
    newest = client.post(
        "/v1/token/refresh", json={"refresh_token": fresh.get_json()["refresh_token"]}
    )
    assert newest.get_json()["code"] == "invalid_token"
    with engine.connect() as conn:
        reason = conn.execute(text("SELECT revoked_reason FROM sessions")).scalar_one()
        alarms = conn.execute(
            text("SELECT count(*) FROM audit_events WHERE type = 'session.refresh_reuse'")
        ).scalar_one()
    assert (reason, alarms) == ("refresh_token_reuse", 1)


def test_a_refresh_after_the_key_expired_from_the_cache(app, monkeypatch):
    client = app.test_client()
    tokens = login(client)
    later = time.monotonic() + signing.ACTIVE_KEY_TTL_SECONDS + 1
    monkeypatch.setattr(signing.time, "monotonic", lambda: later)

    fresh = client.post("/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]})

    assert fresh.status_code == 200
    me = client.get(
        "/v1/me", headers={"Authorization": f"Bearer {fresh.get_json()['access_token']}"}
    )
    assert me.status_code == 200
