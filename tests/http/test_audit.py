"""GET /admin/v1/audit-events and GET /v1/me/security-events."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from authsvc.db import utcnow
from authsvc.services import admin, audit
from tests.conftest import runtime

EVIL = "Mozilla/5.0 (evil)"


@pytest.fixture
def as_admin(app) -> dict[str, str]:
    with runtime(app).sessionmaker() as session, session.begin():
        _, secret = admin.create_key(session, name="audit tests", now=utcnow())
    return {"Authorization": f"Bearer {secret}"}


def events(client, headers, **params):
    response = client.get("/admin/v1/audit-events", query_string=params, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_admins_see_failed_logins_with_reason_and_no_email(api, client, as_admin):
    api.register("ada@example.com")
    api.login("ada@example.com", "wrong password 99")
    api.login("nobody@example.com", "wrong password 99")
    body = events(client, as_admin, type="login.failure")
    outcomes = [e["outcome"] for e in body["events"]]
    assert outcomes == ["unknown_email", "wrong_password"]  # newest first
    unknown = body["events"][0]
    assert unknown["user_id"] is None and len(unknown["email_hash"]) == 64
    assert "nobody" not in str(body)
    by_email = events(client, as_admin, email="Nobody@Example.com")
    assert [e["id"] for e in by_email["events"]] == [unknown["id"]]


def test_filters_by_user_type_prefix_and_time(api, client, as_admin):
    api.register("ada@example.com")
    user_id = api.client.get("/v1/me", headers=api.bearer(api.tokens()["access_token"])).get_json()[
        "id"
    ]
    mine = events(client, as_admin, user_id=user_id)
    assert mine["events"] and all(e["user_id"] == user_id for e in mine["events"])
    types = {
        e["type"] for e in events(client, as_admin, type=["signup.*", "login.success"])["events"]
    }
    assert types and types <= {
        "signup.requested",
        "signup.created",
        "signup.verified",
        "login.success",
    }
    assert "login.success" in types
    future = (utcnow() + timedelta(hours=1)).isoformat()
    assert events(client, as_admin, since=future)["events"] == []
    past = (utcnow() - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert events(client, as_admin, until=past)["events"] == []
    lower_case = (
        (utcnow() + timedelta(hours=1)).isoformat().replace("+00:00", "z").replace("T", "t")
    )
    assert events(client, as_admin, until=lower_case)["events"]  # RFC 3339 allows "t" and "z"


def test_pages_follow_the_cursor(api, client, as_admin):
    for i in range(5):
        client.post("/v1/password/forgot", json={"email": f"p{i}@example.com"})
    first = events(client, as_admin, type="password.forgot", limit=2)
    assert len(first["events"]) == 2 and first["next_cursor"]
    second = events(client, as_admin, type="password.forgot", limit=2, cursor=first["next_cursor"])
    third = events(client, as_admin, type="password.forgot", limit=2, cursor=second["next_cursor"])
    ids = [e["id"] for page in (first, second, third) for e in page["events"]]
    assert len(ids) == len(set(ids)) == 5
    assert third["next_cursor"] is None


@pytest.mark.parametrize(
    ("remote", "spellings"),
    [
        ("2001:db8::7", ["2001:db8::7", "2001:DB8::7", "2001:0db8:0000::0007"]),
        ("192.0.2.7", ["192.0.2.7", "::ffff:192.0.2.7", "::FFFF:c000:207"]),
    ],
)
def test_the_ip_filter_takes_any_spelling_of_the_address(client, as_admin, remote, spellings):
    # The trail records one spelling per address; an investigator may paste another.
    client.post(
        "/v1/password/forgot",
        json={"email": "ip@example.com"},
        environ_base={"REMOTE_ADDR": remote},
    )
    for spelling in spellings:
        found = events(client, as_admin, ip=spelling, type="password.forgot")["events"]
        assert [e["ip"] for e in found] == [remote], spelling


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"since": "2025-01-02T03:04:05"},  # no offset
        {"since": "0001-01-01T00:00:00+01:00"},  # before the first representable UTC time
        {"until": "9999-12-31T23:59:59-05:00"},  # after the last
        {"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"},
        {"since": "2025-01-02T00:00:00Z", "until": "2025-01-02T00:00:00Z"},
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "ten"},
        {"limit": "-1"},
        {"cursor": "abc"},
        {"cursor": "9" * 40},
        {"type": "Login Failure"},
        {"type": "login.*.*"},
        {"type": "x" * 70},
        {"user_id": "a b"},
        {"email": "not an email"},
        {"ip": "<script>"},
        {"color": "blue"},
        {"limit": ["1", "2"]},
    ],
)
def test_invalid_filters_answer_400(client, as_admin, params):
    response = client.get("/admin/v1/audit-events", query_string=params, headers=as_admin)
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "invalid_request"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer ak_wrong"}])
def test_audit_events_need_an_admin_key(client, headers):
    response = client.get("/admin/v1/audit-events", headers=headers)
    assert response.status_code == 401
    assert "events" not in response.get_json()


def test_a_user_access_token_is_not_an_admin_key(api, client):
    api.register("ada@example.com")
    token = api.tokens()["access_token"]
    response = client.get("/admin/v1/audit-events", headers=api.bearer(token))
    assert response.status_code == 401


def test_users_see_their_own_trail(api, client):
    api.register("ada@example.com")
    api.register("bob@example.com")
    client.post(
        "/v1/login",
        json={"email": "ada@example.com", "password": "wrong pass 77"},
        headers={"User-Agent": EVIL},
    )
    api.tokens("bob@example.com")
    token = api.tokens()["access_token"]
    response = client.get("/v1/me/security-events", headers=api.bearer(token))
    assert response.status_code == 200
    trail = response.get_json()["events"]
    types = [(e["type"], e["outcome"]) for e in trail]
    assert types[:2] == [("login.success", "authenticated"), ("login.failure", "wrong_password")]
    failure = trail[1]
    assert failure["ip"] == "127.0.0.1" and failure["user_agent"] == EVIL
    assert all("email_hash" not in e and "admin_key_id" not in e for e in trail)
    assert ("signup.verified", "success") in types
    bob_sessions = [e for e in trail if e["type"] == "login.success"]
    assert len(bob_sessions) == 1  # bob's login is not in ada's trail


def test_security_events_page_and_validate(api, client):
    api.register("ada@example.com")
    token = api.tokens()["access_token"]
    api.tokens()
    first = client.get("/v1/me/security-events?limit=1", headers=api.bearer(token)).get_json()
    assert len(first["events"]) == 1 and first["next_cursor"]
    second = client.get(
        f"/v1/me/security-events?limit=1&cursor={first['next_cursor']}", headers=api.bearer(token)
    ).get_json()
    assert second["events"][0]["id"] != first["events"][0]["id"]
    for query in (
        "limit=0",
        "limit=x",
        "limit=%C2%B2",  # a superscript two: a digit to str.isdigit, not to int()
        "cursor=-3",
        "cursor=9999999999999999999",  # past a 64-bit id
        "cursor=1%0A",
        "type=login.success",
    ):
        response = client.get(f"/v1/me/security-events?{query}", headers=api.bearer(token))
        assert response.status_code == 400, query
        assert response.get_json()["code"] == "invalid_request"
    assert client.get("/v1/me/security-events").status_code == 401


def test_the_trail_behind_the_api_verifies(api, client, app, as_admin):
    api.register("ada@example.com")
    api.login("ada@example.com", "wrong password 99")
    api.tokens()
    with runtime(app).sessionmaker() as session:
        result = audit.verify(session, keyring=runtime(app).deps.keyring)
    assert result.ok, result.reason


def test_a_wiped_trail_with_its_head_reset_unsigned_stays_found_after_a_failed_login(
    api, app, connection
):
    # Write access to the database, no keys: delete every event and set the head back to what
    # `db upgrade` leaves; then make the service write one event.
    api.register("ada@example.com")
    connection.execute(text("DELETE FROM audit_events"))
    connection.execute(
        text(
            "UPDATE audit_chain_heads SET anchor_id = 0, anchor_hash = :g, last_id = 0, "
            "last_hash = :g, head_mac = '', updated_at = NULL"
        ),
        {"g": audit.GENESIS},
    )
    assert api.login("ada@example.com", "wrong password 99").status_code == 401

    with runtime(app).sessionmaker() as session:
        result = audit.verify(session, keyring=runtime(app).deps.keyring)
    assert not result.ok
    assert "unsigned although authsvc had started" in result.reason
