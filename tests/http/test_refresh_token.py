"""POST /v1/token/refresh: rotation on every use; reuse revokes the whole family."""

from __future__ import annotations

import json
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import select, update

from authsvc.crypto.tokens import token_hash
from authsvc.db import utcnow
from authsvc.models import AuditEvent, RefreshToken, Session, User
from tests.conftest import statements_during


def refresh(client, token: str):
    return client.post("/v1/token/refresh", json={"refresh_token": token})


def test_each_use_returns_a_new_pair(api, client):
    api.register()
    first = api.tokens()

    response = refresh(client, first["refresh_token"])

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    second = response.get_json()
    assert set(second) == {"status", "access_token", "refresh_token", "token_type", "expires_in"}
    assert second["status"] == "authenticated"
    assert second["token_type"] == "Bearer"
    assert second["expires_in"] == 600
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    third = refresh(client, second["refresh_token"]).get_json()
    assert third["refresh_token"] not in (first["refresh_token"], second["refresh_token"])
    me = client.get("/v1/me", headers=api.bearer(third["access_token"]))
    assert me.status_code == 200


def test_a_rotation_stays_in_the_same_session(api, client):
    api.register()
    first = api.tokens()
    second = refresh(client, first["refresh_token"]).get_json()

    sessions = client.get("/v1/me/sessions", headers=api.bearer(second["access_token"])).get_json()[
        "sessions"
    ]

    assert len(sessions) == 1
    assert sessions[0]["current"] is True


def test_reuse_revokes_the_family_and_is_audited(api, client, connection):
    api.register()
    first = api.tokens()
    second = refresh(client, first["refresh_token"]).get_json()
    third = refresh(client, second["refresh_token"]).get_json()

    reused = refresh(client, first["refresh_token"])

    assert reused.status_code == 400
    assert reused.get_json()["code"] == "invalid_token"
    # The newest token of the family dies too, and so do its access tokens.
    newest = refresh(client, third["refresh_token"])
    assert newest.status_code == 400
    assert newest.get_json()["code"] == "invalid_token"
    for tokens in (first, second, third):
        assert client.get("/v1/me", headers=api.bearer(tokens["access_token"])).status_code == 401
    session = connection.execute(select(Session)).one()
    assert session.revoked_reason == "refresh_token_reuse"
    [event] = connection.execute(
        select(AuditEvent).where(AuditEvent.type == "session.refresh_reuse")
    ).all()
    assert event.outcome == "revoked"
    assert json.loads(event.details)["session_id"] == session.id


def test_reuse_leaves_other_sessions_alone(api, client):
    api.register()
    victim, bystander = api.tokens(), api.tokens()
    refresh(client, victim["refresh_token"])

    refresh(client, victim["refresh_token"])

    assert client.get("/v1/me", headers=api.bearer(bystander["access_token"])).status_code == 200
    assert refresh(client, bystander["refresh_token"]).status_code == 200


def test_refresh_tokens_are_stored_hashed(api, connection):
    api.register()
    tokens = api.tokens()

    stored = connection.scalars(select(RefreshToken.token_hash)).all()

    assert stored == [token_hash(tokens["refresh_token"])]


@pytest.mark.parametrize("token", ["rt_unknown", "", "rt_" + "A" * 43])
def test_unknown_refresh_tokens_are_refused(client, token):
    response = refresh(client, token)

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_token"


def test_an_access_token_is_not_a_refresh_token(api, client):
    api.register()
    tokens = api.tokens()

    assert refresh(client, tokens["access_token"]).get_json()["code"] == "invalid_token"


def test_refresh_after_logout_is_refused(api, client):
    api.register()
    tokens = api.tokens()
    client.post("/v1/logout", json={"refresh_token": tokens["refresh_token"]})

    assert refresh(client, tokens["refresh_token"]).get_json()["code"] == "invalid_token"


def test_a_disabled_users_token_is_refused_and_not_spent(api, client, connection):
    api.register()
    tokens = api.tokens()
    connection.execute(update(User).values(disabled_at=utcnow()))

    assert refresh(client, tokens["refresh_token"]).get_json()["code"] == "invalid_token"

    assert connection.execute(select(RefreshToken.used_at)).scalar_one() is None
    connection.execute(update(User).values(disabled_at=None))
    assert refresh(client, tokens["refresh_token"]).status_code == 200


def test_a_spent_token_of_an_ended_session_is_refused_without_a_reuse_alarm(
    api, client, connection
):
    api.register()
    first = api.tokens()
    second = refresh(client, first["refresh_token"]).get_json()
    client.post("/v1/logout", json={"refresh_token": second["refresh_token"]})

    assert refresh(client, first["refresh_token"]).get_json()["code"] == "invalid_token"

    assert connection.execute(select(Session.revoked_reason)).scalar_one() == "logout"
    reuse = select(AuditEvent).where(AuditEvent.type == "session.refresh_reuse")
    assert connection.execute(reuse).all() == []


def test_an_expired_session_cannot_be_refreshed(api, client, connection):
    api.register()
    tokens = api.tokens()
    connection.execute(update(Session).values(expires_at=utcnow()))

    assert refresh(client, tokens["refresh_token"]).get_json()["code"] == "invalid_token"
    assert connection.execute(select(RefreshToken.used_at)).scalar_one() is None


def test_a_refresh_near_the_end_of_a_session_gets_an_access_token_that_ends_with_it(
    api, client, connection
):
    api.register()
    tokens = api.tokens()
    end = utcnow().replace(microsecond=0) + timedelta(seconds=100)
    connection.execute(update(Session).values(expires_at=end))

    response = refresh(client, tokens["refresh_token"])

    assert response.status_code == 200
    pair = response.get_json()
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert claims["exp"] == int(end.timestamp())
    assert 0 < pair["expires_in"] <= 100


def test_rotation_records_use_and_keeps_the_login(api, client, connection):
    api.register()
    first = api.tokens()
    login = connection.execute(select(Session)).one()

    second = refresh(client, first["refresh_token"]).get_json()

    after = connection.execute(select(Session)).one()
    assert after.last_used_at > login.last_used_at
    assert (after.auth_time, after.amr, after.created_at) == (
        login.auth_time,
        login.amr,
        login.created_at,
    )
    rows = {
        row.token_hash: row
        for row in connection.execute(
            select(RefreshToken).where(RefreshToken.session_id == login.id)
        )
    }
    assert rows[token_hash(first["refresh_token"])].used_at == after.last_used_at
    assert rows[token_hash(second["refresh_token"])].used_at is None
    assert len(rows) == 2
    me = client.get("/v1/me", headers=api.bearer(second["access_token"])).get_json()
    assert me["id"] == login.user_id


def test_a_refresh_takes_at_most_three_statements(api, client, connection):
    api.register()
    tokens = api.tokens()
    answers = []
    seen = statements_during(
        connection, lambda: answers.append(refresh(client, tokens["refresh_token"]))
    )
    [response] = answers

    assert response.status_code == 200
    assert len(seen) <= 3, seen
