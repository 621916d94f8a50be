"""GET /v1/me/sessions, DELETE /v1/me/sessions and DELETE /v1/me/sessions/{id}."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from sqlalchemy import func, select, update

from authsvc.app import create_app
from authsvc.db import utcnow
from authsvc.models import AuditEvent, Session
from tests.conftest import ContractClient

PASSWORD = "correct horse 42"


def login_from(client, ip: str, user_agent: str = "pytest", **headers):
    response = client.post(
        "/v1/login",
        json={"email": "ada@example.com", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": ip},
        headers={"User-Agent": user_agent, **headers},
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def sessions_of(api, tokens):
    response = api.client.get("/v1/me/sessions", headers=api.bearer(tokens["access_token"]))
    assert response.status_code == 200
    return response.get_json()["sessions"]


def test_sessions_lists_every_live_login(api, client):
    api.register()
    phone = login_from(client, "198.51.100.1", "Phone/1.0")
    laptop = login_from(client, "198.51.100.2", "Laptop/2.0")

    listed = sessions_of(api, laptop)

    assert [s["user_agent"] for s in listed] == ["Laptop/2.0", "Phone/1.0"]  # newest first
    assert [s["ip"] for s in listed] == ["198.51.100.2", "198.51.100.1"]
    assert [s["current"] for s in listed] == [True, False]
    assert all(s["amr"] == ["pwd"] for s in listed)
    assert {"id", "created_at", "last_used_at", "auth_time"} <= set(listed[0])
    assert [s["current"] for s in sessions_of(api, phone)] == [False, True]


def test_revoking_another_session(api, client):
    api.register()
    phone, laptop = api.tokens(), api.tokens()
    phone_id = next(s["id"] for s in sessions_of(api, phone) if s["current"])

    response = client.delete(
        f"/v1/me/sessions/{phone_id}", headers=api.bearer(laptop["access_token"])
    )

    assert response.status_code == 204
    assert client.get("/v1/me", headers=api.bearer(phone["access_token"])).status_code == 401
    refreshed = client.post("/v1/token/refresh", json={"refresh_token": phone["refresh_token"]})
    assert refreshed.get_json()["code"] == "invalid_token"
    assert [s["current"] for s in sessions_of(api, laptop)] == [True]


def test_signing_out_everywhere_else_keeps_only_this_session(api, client, connection):
    api.register()
    phone, tablet, laptop = api.tokens(), api.tokens(), api.tokens()

    response = client.delete("/v1/me/sessions", headers=api.bearer(laptop["access_token"]))

    assert (response.status_code, response.get_json()) == (200, {"sessions_revoked": 2})
    for gone in (phone, tablet):
        assert client.get("/v1/me", headers=api.bearer(gone["access_token"])).status_code == 401
        refreshed = client.post("/v1/token/refresh", json={"refresh_token": gone["refresh_token"]})
        assert refreshed.get_json()["code"] == "invalid_token"
    assert [s["current"] for s in sessions_of(api, laptop)] == [True]
    again = client.delete("/v1/me/sessions", headers=api.bearer(laptop["access_token"]))
    assert again.get_json() == {"sessions_revoked": 0}
    events = client.get("/v1/me/security-events", headers=api.bearer(laptop["access_token"]))
    counts = [
        e["details"]["sessions_revoked"]
        for e in events.get_json()["events"]
        if e["type"] == "session.revoked_others"
    ]
    assert counts == [0, 2]  # newest first


def test_ending_other_sessions_needs_a_recent_login_but_ending_ones_own_does_not(
    api, settings, connection
):
    api.register()
    phone, laptop = api.tokens(), api.tokens()
    phone_id = next(s["id"] for s in sessions_of(api, phone) if s["current"])
    laptop_id = next(s["id"] for s in sessions_of(api, laptop) if s["current"])
    app = create_app(dataclasses.replace(settings, reauth_window=timedelta(0)), bind=connection)
    app.test_client_class = ContractClient
    stale = app.test_client()

    for path in ("/v1/me/sessions", f"/v1/me/sessions/{phone_id}"):
        response = stale.delete(path, headers=api.bearer(laptop["access_token"]))
        assert (response.status_code, response.get_json()["code"]) == (
            403,
            "reauthentication_required",
        )
    assert stale.get("/v1/me", headers=api.bearer(phone["access_token"])).status_code == 200

    own = stale.delete(f"/v1/me/sessions/{laptop_id}", headers=api.bearer(laptop["access_token"]))

    assert own.status_code == 204
    assert stale.get("/v1/me", headers=api.bearer(laptop["access_token"])).status_code == 401


def test_revoking_the_current_session_signs_out(api, client):
    api.register()
    tokens = api.tokens()
    [current] = sessions_of(api, tokens)

    assert (
        client.delete(
            f"/v1/me/sessions/{current['id']}", headers=api.bearer(tokens["access_token"])
        ).status_code
        == 204
    )

    assert client.get("/v1/me", headers=api.bearer(tokens["access_token"])).status_code == 401


def test_another_users_session_is_not_found(api, client):
    api.register("ada@example.com")
    api.register("bob@example.com")
    ada = api.tokens("ada@example.com")
    bob = api.tokens("bob@example.com")
    [bobs] = sessions_of(api, bob)

    response = client.delete(
        f"/v1/me/sessions/{bobs['id']}", headers=api.bearer(ada["access_token"])
    )

    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"
    assert client.get("/v1/me", headers=api.bearer(bob["access_token"])).status_code == 200


def test_unknown_and_revoked_sessions_are_not_found(api, client):
    api.register()
    phone, laptop = api.tokens(), api.tokens()
    phone_id = next(s["id"] for s in sessions_of(api, phone) if s["current"])
    client.delete(f"/v1/me/sessions/{phone_id}", headers=api.bearer(laptop["access_token"]))

    for session_id in (phone_id, "no-such-session", "x" * 500):
        response = client.delete(
            f"/v1/me/sessions/{session_id}", headers=api.bearer(laptop["access_token"])
        )
        assert response.status_code == 404
        assert response.get_json()["code"] == "not_found"


def test_ended_sessions_are_not_found(api, client, connection, settings):
    # Past its absolute end, or idle too long: no longer listed, so no longer revocable either.
    api.register()
    phone, laptop = api.tokens(), api.tokens()
    phone_id = next(s["id"] for s in sessions_of(api, phone) if s["current"])
    now = utcnow()
    ended = [
        {"expires_at": now - timedelta(seconds=1)},
        {"last_used_at": now - settings.session_idle_timeout - timedelta(seconds=1)},
    ]

    for change in ended:
        connection.execute(update(Session).where(Session.id == phone_id).values(**change))
        assert [s["current"] for s in sessions_of(api, laptop)] == [True]

        response = client.delete(
            f"/v1/me/sessions/{phone_id}", headers=api.bearer(laptop["access_token"])
        )

        assert response.status_code == 404
        assert response.get_json()["code"] == "not_found"
        assert connection.scalar(select(Session.revoked_at).where(Session.id == phone_id)) is None
        connection.execute(
            update(Session)
            .where(Session.id == phone_id)
            .values(expires_at=now + timedelta(days=1), last_used_at=now)
        )
    assert (
        connection.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.type == "session.revoked")
        )
        == 0
    )


def test_sessions_need_a_bearer_token(client):
    assert client.get("/v1/me/sessions").get_json()["code"] == "unauthenticated"
    assert client.delete("/v1/me/sessions").get_json()["code"] == "unauthenticated"
    assert client.delete("/v1/me/sessions/abc").status_code == 401


def test_x_forwarded_for_is_ignored_by_default(api, client):
    api.register()
    tokens = login_from(client, "198.51.100.9", **{"X-Forwarded-For": "203.0.113.66"})

    [session] = sessions_of(api, tokens)

    assert session["ip"] == "198.51.100.9"


def test_x_forwarded_for_is_honoured_behind_trusted_proxies(api, settings, connection):
    api.register()
    app = create_app(dataclasses.replace(settings, trusted_proxies=1), bind=connection)
    app.test_client_class = ContractClient
    client = app.test_client()
    tokens = login_from(client, "10.0.0.2", **{"X-Forwarded-For": "198.51.100.200, 203.0.113.66"})

    listed = client.get("/v1/me/sessions", headers=api.bearer(tokens["access_token"]))

    # One trusted proxy: the right-most address is the one it saw.
    assert listed.get_json()["sessions"][0]["ip"] == "203.0.113.66"
