"""POST /v1/logout: ends one session (refresh-token family)."""

from __future__ import annotations

from sqlalchemy import select

from authsvc.models import AuditEvent, Session


def logout(client, token: str):
    return client.post("/v1/logout", json={"refresh_token": token})


def test_logout_ends_the_session(api, client, connection):
    api.register()
    tokens = api.tokens()

    response = logout(client, tokens["refresh_token"])

    assert response.status_code == 204
    assert response.get_data() == b""
    assert "Content-Type" not in response.headers  # no body, no type
    assert client.get("/v1/me", headers=api.bearer(tokens["access_token"])).status_code == 401
    refreshed = client.post("/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.get_json()["code"] == "invalid_token"
    assert connection.scalar(select(Session.revoked_reason)) == "logout"
    assert "session.logout" in connection.scalars(select(AuditEvent.type)).all()


def test_logout_leaves_other_sessions_alone(api, client):
    api.register()
    phone, laptop = api.tokens(), api.tokens()

    logout(client, phone["refresh_token"])

    assert client.get("/v1/me", headers=api.bearer(laptop["access_token"])).status_code == 200


def test_logout_with_a_rotated_out_token_still_ends_the_session(api, client):
    api.register()
    first = api.tokens()
    second = client.post(
        "/v1/token/refresh", json={"refresh_token": first["refresh_token"]}
    ).get_json()

    assert logout(client, first["refresh_token"]).status_code == 204

    assert client.get("/v1/me", headers=api.bearer(second["access_token"])).status_code == 401


def test_logout_with_a_spent_token_is_recorded_as_its_replay(api, client, connection):
    # Whoever still holds a rotated-out token holds a copy of the family: the session ends as
    # with any logout, and the trail says why, as for a replay to the refresh.
    api.register()
    first = api.tokens()
    client.post("/v1/token/refresh", json={"refresh_token": first["refresh_token"]})

    assert logout(client, first["refresh_token"]).status_code == 204

    assert connection.scalar(select(Session.revoked_reason)) == "refresh_token_reuse"
    events = connection.execute(
        select(AuditEvent.type, AuditEvent.outcome).where(AuditEvent.type.like("session.%"))
    ).all()
    assert [tuple(e) for e in events] == [("session.refresh_reuse", "revoked")]


def test_logout_twice_is_harmless(api, client, connection):
    api.register()
    tokens = api.tokens()
    logout(client, tokens["refresh_token"])

    assert logout(client, tokens["refresh_token"]).status_code == 204
    events = connection.scalars(select(AuditEvent.type).where(AuditEvent.type == "session.logout"))
    assert len(events.all()) == 1


def test_logout_with_an_unknown_token(client):
    response = logout(client, "rt_unknown")

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_token"
