"""/admin/v1/users: create (password or imported hash), find, get, delete, disable, enable,
and an account's sessions."""

from __future__ import annotations

import base64
import hashlib
import json

import argon2
import bcrypt
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session as DbSession

from authsvc.db import utcnow
from authsvc.errors import NotFound
from authsvc.models import AdminKey, AuditEvent, Session, User
from authsvc.services import admin

PASSWORD = "imported horse 42"


@pytest.fixture
def admin_key(connection) -> str:
    with DbSession(bind=connection, join_transaction_mode="create_savepoint") as session:
        _, secret = admin.create_key(session, name="tests", now=utcnow())
        session.commit()
    return secret


@pytest.fixture
def as_admin(admin_key):
    return {"Authorization": f"Bearer {admin_key}"}


def create(client, headers, **body):
    return client.post("/admin/v1/users", json=body, headers=headers)


def argon2_hash(password: str) -> str:
    return argon2.PasswordHasher(time_cost=2, memory_cost=2048, parallelism=2).hash(password)


def argon2i_hash(password: str) -> str:
    return argon2.PasswordHasher(
        time_cost=1, memory_cost=1024, parallelism=1, type=argon2.Type.I
    ).hash(password)


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def pbkdf2_hash(password: str, iterations: int = 1000, salt: str = "Sa1tySa1t") -> str:
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


def test_create_a_user_with_a_password(api, client, as_admin, connection):
    response = create(client, as_admin, email="Ada@Example.com", password=PASSWORD)

    assert response.status_code == 201
    view = response.get_json()
    assert view["email"] == "ada@example.com"
    assert view["email_verified"] is True
    assert view["disabled"] is False
    assert view["password_invalidated"] is False
    assert view["mfa_methods"] == []
    assert api.login("ada@example.com", PASSWORD).get_json()["status"] == "authenticated"
    stored = connection.scalar(select(User.password_hash))
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


@pytest.mark.parametrize(
    ("make_hash", "source"),
    [
        (argon2_hash, "argon2"),
        (argon2i_hash, "argon2"),
        (bcrypt_hash, "bcrypt"),
        (pbkdf2_hash, "pbkdf2_sha256"),
    ],
    ids=["argon2id-other-params", "argon2i", "bcrypt", "pbkdf2_sha256"],
)
def test_imported_hashes_log_in_and_are_upgraded(
    api, client, as_admin, connection, make_hash, source
):
    imported = make_hash(PASSWORD)

    response = create(client, as_admin, email="ada@example.com", password_hash=imported)

    assert response.status_code == 201
    assert connection.scalar(select(User.password_hash)) == imported
    details = connection.scalar(
        select(AuditEvent.details).where(AuditEvent.type == "admin.user_created")
    )
    assert json.loads(details)["hash_source"] == source
    assert api.login("ada@example.com", "wrong horse 42").status_code == 401
    assert connection.scalar(select(User.password_hash)) == imported  # no upgrade on failure

    assert api.login("ada@example.com", PASSWORD).get_json()["status"] == "authenticated"

    upgraded = connection.scalar(select(User.password_hash))
    assert upgraded.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert api.login("ada@example.com", PASSWORD).get_json()["status"] == "authenticated"
    assert connection.scalar(select(User.password_hash)) == upgraded  # stable from now on


def test_an_unverified_user_cannot_log_in(api, client, as_admin):
    view = create(
        client, as_admin, email="ada@example.com", password=PASSWORD, email_verified=False
    ).get_json()

    assert view["email_verified"] is False
    assert api.login("ada@example.com", PASSWORD).get_json()["code"] == "invalid_credentials"


@pytest.mark.parametrize(
    "body",
    [
        {"email": "ada@example.com"},
        {"email": "ada@example.com", "password": PASSWORD, "password_hash": "$2b$04$x"},
        {"email": "ada@example.com", "password_hash": "md5$abc$def"},
        {"email": "ada@example.com", "password_hash": "$2b$31$" + "a" * 53},  # cost too high
        {"email": "ada@example.com", "password_hash": "plaintext password"},
        {"email": "not an email", "password": PASSWORD},
        {"email": "ada@example.com", "password": PASSWORD, "email_verified": "yes"},
    ],
    ids=[
        "no-password",
        "both",
        "md5",
        "bcrypt-cost-31",
        "plaintext",
        "bad-email",
        "verified-not-bool",
    ],
)
def test_invalid_creations_are_refused(client, as_admin, connection, body):
    response = create(client, as_admin, **body)

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"
    assert connection.scalar(select(User.id)) is None


def test_a_creation_with_a_member_it_does_not_take_is_refused(client, as_admin, connection):
    # A misspelt email_verified: false was ignored, and the address counted as verified.
    response = create(
        client, as_admin, email="ada@example.com", password=PASSWORD, email_verifed=False
    )

    body = response.get_json()
    assert (response.status_code, body["code"], body["field"]) == (
        400,
        "invalid_request",
        "email_verifed",
    )
    assert connection.scalar(select(User.id)) is None


def test_a_weak_password_is_refused(client, as_admin):
    response = create(client, as_admin, email="ada@example.com", password="qwerty123456")

    assert response.status_code == 400
    assert response.get_json()["code"] == "weak_password"


def test_a_taken_email_conflicts(client, as_admin):
    create(client, as_admin, email="ada@example.com", password=PASSWORD)

    response = create(client, as_admin, email="ADA@example.com", password="other horse 43")

    assert response.status_code == 409
    assert response.get_json()["code"] == "email_taken"


def test_find_by_email(client, as_admin):
    created = create(client, as_admin, email="ada@example.com", password=PASSWORD).get_json()

    found = client.get(
        "/admin/v1/users", query_string={"email": " ADA@example.com"}, headers=as_admin
    )
    missing = client.get(
        "/admin/v1/users", query_string={"email": "bob@example.com"}, headers=as_admin
    )
    nonsense = client.get(
        "/admin/v1/users", query_string={"email": "not an email"}, headers=as_admin
    )

    assert found.status_code == 200
    assert found.get_json() == {"users": [created]}
    assert missing.get_json() == {"users": []}
    assert nonsense.get_json() == {"users": []}


@pytest.mark.parametrize("query", [{}, {"email": ""}, {"email": "a" * 321}])
def test_find_needs_a_sensible_email(client, as_admin, query):
    # An empty value is no email: openapi.yaml requires the parameter, and an empty one with it.
    response = client.get("/admin/v1/users", query_string=query, headers=as_admin)

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"
    assert response.get_json()["field"] == "email"


def test_get_by_id(client, as_admin):
    created = create(client, as_admin, email="ada@example.com", password=PASSWORD).get_json()

    response = client.get(f"/admin/v1/users/{created['id']}", headers=as_admin)

    assert response.status_code == 200
    assert response.get_json() == created


def test_delete_removes_the_user_and_every_session(api, client, as_admin, connection):
    created = create(client, as_admin, email="ada@example.com", password=PASSWORD).get_json()
    tokens = api.tokens("ada@example.com", PASSWORD)

    response = client.delete(f"/admin/v1/users/{created['id']}", headers=as_admin)

    assert response.status_code == 204
    assert client.get(f"/admin/v1/users/{created['id']}", headers=as_admin).status_code == 404
    assert connection.scalar(select(Session.id)) is None
    assert client.get("/v1/me", headers=api.bearer(tokens["access_token"])).status_code == 401
    assert api.login("ada@example.com", PASSWORD).get_json()["code"] == "invalid_credentials"
    assert "admin.user_deleted" in connection.scalars(select(AuditEvent.type)).all()
    # The address is free again.
    assert create(client, as_admin, email="ada@example.com", password=PASSWORD).status_code == 201


def test_disable_answers_logins_like_a_wrong_password(api, client, as_admin):
    created = create(client, as_admin, email="ada@example.com", password=PASSWORD).get_json()
    tokens = api.tokens("ada@example.com", PASSWORD)
    wrong = api.login("ada@example.com", "wrong horse 42")

    response = client.post(f"/admin/v1/users/{created['id']}/disable", headers=as_admin)

    assert response.status_code == 200
    assert response.get_json()["disabled"] is True
    refused = api.login("ada@example.com", PASSWORD)
    assert refused.status_code == wrong.status_code == 401
    assert refused.get_data() == wrong.get_data()
    assert client.get("/v1/me", headers=api.bearer(tokens["access_token"])).status_code == 401
    again = client.post(f"/admin/v1/users/{created['id']}/disable", headers=as_admin)
    assert again.status_code == 200  # idempotent


def test_enable_lets_a_disabled_account_log_in_again_but_not_its_old_sessions(
    api, client, as_admin, connection
):
    created = create(client, as_admin, email="ada@example.com", password=PASSWORD).get_json()
    old = api.tokens("ada@example.com", PASSWORD)
    client.post(f"/admin/v1/users/{created['id']}/disable", headers=as_admin)

    response = client.post(f"/admin/v1/users/{created['id']}/enable", headers=as_admin)

    assert response.status_code == 200
    assert response.get_json() == {**created, "disabled": False}
    fresh = api.tokens("ada@example.com", PASSWORD)
    assert client.get("/v1/me", headers=api.bearer(fresh["access_token"])).status_code == 200
    assert client.get("/v1/me", headers=api.bearer(old["access_token"])).status_code == 401
    refreshed = client.post("/v1/token/refresh", json={"refresh_token": old["refresh_token"]})
    assert (refreshed.status_code, refreshed.get_json()["code"]) == (400, "invalid_token")
    # Enabling an enabled account changes nothing and records nothing more.
    again = client.post(f"/admin/v1/users/{created['id']}/enable", headers=as_admin)
    assert again.get_json() == response.get_json()
    types = connection.scalars(
        select(AuditEvent.type)
        .where(AuditEvent.type.in_(["admin.user_disabled", "admin.user_enabled"]))
        .order_by(AuditEvent.id)
    ).all()
    assert types == ["admin.user_disabled", "admin.user_enabled"]


def test_an_admin_lists_an_accounts_live_sessions_and_each_look_is_audited(
    api, client, as_admin, connection
):
    created = create(client, as_admin, email="ada@example.com", password=PASSWORD).get_json()
    first = api.tokens("ada@example.com", PASSWORD)
    second = api.tokens("ada@example.com", PASSWORD)
    client.delete(
        f"/v1/me/sessions/{_session_of(client, api, first)}",
        headers=api.bearer(first["access_token"]),
    )

    response = client.get(f"/admin/v1/users/{created['id']}/sessions", headers=as_admin)

    assert response.status_code == 200
    [live] = response.get_json()["sessions"]
    assert live["id"] == _session_of(client, api, second)
    assert live["current"] is False and live["amr"] == ["pwd"]
    looks = connection.execute(
        select(AuditEvent.outcome, AuditEvent.user_id, AuditEvent.admin_key_id).where(
            AuditEvent.type == "admin.sessions_viewed"
        )
    ).all()
    assert [(o, u) for o, u, _ in looks] == [("found", created["id"])]
    assert looks[0][2] == connection.scalar(select(AdminKey.id))
    # The user does not see the admin's look among their own events.
    mine = client.get("/v1/me/security-events", headers=api.bearer(second["access_token"]))
    assert "admin.sessions_viewed" not in {e["type"] for e in mine.get_json()["events"]}


def _session_of(client, api, tokens) -> str:
    sessions = client.get("/v1/me/sessions", headers=api.bearer(tokens["access_token"]))
    [current] = [s for s in sessions.get_json()["sessions"] if s["current"]]
    return current["id"]


def test_an_admin_signs_an_account_out_everywhere_and_changes_nothing_else(
    api, client, as_admin, connection
):
    created = create(client, as_admin, email="ada@example.com", password=PASSWORD).get_json()
    first, second = api.tokens("ada@example.com", PASSWORD), api.tokens("ada@example.com", PASSWORD)

    response = client.delete(f"/admin/v1/users/{created['id']}/sessions", headers=as_admin)

    assert (response.status_code, response.get_json()) == (200, {"sessions_revoked": 2})
    for tokens in (first, second):
        assert client.get("/v1/me", headers=api.bearer(tokens["access_token"])).status_code == 401
        again = client.post("/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert (again.status_code, again.get_json()["code"]) == (400, "invalid_token")
    # The account is as it was: same view, and the same password logs in.
    assert client.get(f"/admin/v1/users/{created['id']}", headers=as_admin).get_json() == created
    fresh = api.tokens("ada@example.com", PASSWORD)
    events = client.get("/v1/me/security-events", headers=api.bearer(fresh["access_token"]))
    [revoked] = [e for e in events.get_json()["events"] if e["type"] == "admin.sessions_revoked"]
    assert revoked["details"] == {"sessions_revoked": 2}
    # Nothing live: 0, and audited all the same (an admin action).
    client.delete(
        f"/v1/me/sessions/{_session_of(client, api, fresh)}",
        headers=api.bearer(fresh["access_token"]),
    )
    none = client.delete(f"/admin/v1/users/{created['id']}/sessions", headers=as_admin)
    assert none.get_json() == {"sessions_revoked": 0}
    assert (
        connection.scalar(select(func.count()).where(AuditEvent.type == "admin.sessions_revoked"))
        == 2
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/v1/users/{id}"),
        ("DELETE", "/admin/v1/users/{id}"),
        ("POST", "/admin/v1/users/{id}/disable"),
        ("POST", "/admin/v1/users/{id}/enable"),
        ("GET", "/admin/v1/users/{id}/sessions"),
        ("DELETE", "/admin/v1/users/{id}/sessions"),
    ],
)
def test_unknown_ids_are_not_found(client, as_admin, method, path):
    response = client.open(path.format(id="no-such-user"), method=method, headers=as_admin)

    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"


ADMIN_ROUTES = [
    ("POST", "/admin/v1/users", {"email": "bob@example.com", "password": PASSWORD}),
    ("GET", "/admin/v1/users?email=ada@example.com", None),
    ("GET", "/admin/v1/users/{id}", None),
    ("DELETE", "/admin/v1/users/{id}", None),
    ("POST", "/admin/v1/users/{id}/disable", None),
    ("POST", "/admin/v1/users/{id}/enable", None),
    ("GET", "/admin/v1/users/{id}/sessions", None),
    ("DELETE", "/admin/v1/users/{id}/sessions", None),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        (
            "POST",
            "/admin/v1/users?dry_run=true",
            {"email": "bob@example.com", "password": PASSWORD},
            "dry_run",
        ),
        ("GET", "/admin/v1/users?email=ada@example.com&emial=x", None, "emial"),
        ("GET", "/admin/v1/users?email=ada@example.com&email=bob@example.com", None, "email"),
        ("GET", "/admin/v1/users/{id}?fields=email", None, "fields"),
        ("DELETE", "/admin/v1/users/{id}?dry_run=true", None, "dry_run"),
        ("POST", "/admin/v1/users/{id}/disable?dry_run=true", None, "dry_run"),
        ("POST", "/admin/v1/users/{id}/enable?dry_run=true", None, "dry_run"),
        ("GET", "/admin/v1/users/{id}/sessions?limit=1", None, "limit"),
        ("DELETE", "/admin/v1/users/{id}/sessions?dry_run=true", None, "dry_run"),
    ],
)
def test_admin_routes_refuse_query_parameters_they_do_not_take(
    client, as_admin, connection, method, path, body, field
):
    # As the breach responses and the audit events: ignored, ?dry_run=true deleted the user
    # for real, and of a repeated email only the first was looked up.
    user = create(client, as_admin, email="ada@example.com", password=PASSWORD).get_json()
    events = connection.scalar(select(func.count()).select_from(AuditEvent))

    response = client.open(path.format(id=user["id"]), method=method, json=body, headers=as_admin)

    problem = response.get_json()
    assert (response.status_code, problem["code"], problem["field"]) == (
        400,
        "invalid_request",
        field,
    )
    assert client.get(f"/admin/v1/users/{user['id']}", headers=as_admin).get_json() == user
    assert connection.scalar(select(User.id).where(User.email == "bob@example.com")) is None
    # Nothing audited either: the lookup and the view below are the only new events.
    assert connection.scalar(select(func.count()).select_from(AuditEvent)) == events + 1


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer ak_wrong",
        "Basic YWRtaW46YWRtaW4=",
        "USER_ACCESS_TOKEN",
        "REVOKED_KEY",
    ],
)
def test_admin_routes_without_a_valid_key_answer_401_and_no_data(
    api, client, as_admin, connection, method, path, body, authorization
):
    user = create(client, as_admin, email="ada@example.com", password=PASSWORD).get_json()
    if authorization == "USER_ACCESS_TOKEN":
        authorization = f"Bearer {api.tokens('ada@example.com', PASSWORD)['access_token']}"
    elif authorization == "REVOKED_KEY":
        with DbSession(bind=connection, join_transaction_mode="create_savepoint") as session:
            key_id, secret = admin.create_key(session, name="old", now=utcnow())
            session.get(AdminKey, key_id).revoked_at = utcnow()
            session.commit()
        authorization = f"Bearer {secret}"
    headers = {"Authorization": authorization} if authorization is not None else {}

    response = client.open(path.format(id=user["id"]), method=method, json=body, headers=headers)

    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "invalid_admin_key"
    text = response.get_data(as_text=True)
    assert "ada@example.com" not in text and user["id"] not in text
    # Nothing happened.
    assert client.get(f"/admin/v1/users/{user['id']}", headers=as_admin).get_json() == user
    assert connection.scalar(select(User.id).where(User.email == "bob@example.com")) is None


@pytest.mark.parametrize(
    ("authorization", "outcome"),
    [
        (None, None),
        ("Basic YWRtaW46YWRtaW4=", None),
        ("Bearer ak_wrong", "unknown_key"),
        ("USER_ACCESS_TOKEN", "unknown_key"),
        ("REVOKED_KEY", "revoked_key"),
    ],
)
def test_a_presented_key_that_opens_nothing_is_audited(
    api, client, connection, authorization, outcome
):
    """A wrong or revoked key is a security event; a revoked one names the key, since its use
    means it leaked. A request without a bearer key at all is not logged as an attempt."""
    key_id = None
    if authorization == "USER_ACCESS_TOKEN":
        api.register("ada@example.com")
        authorization = f"Bearer {api.tokens()['access_token']}"
    elif authorization == "REVOKED_KEY":
        with DbSession(bind=connection, join_transaction_mode="create_savepoint") as session:
            key_id, secret = admin.create_key(session, name="old", now=utcnow())
            admin.revoke_key(session, key_id=key_id, now=utcnow())
            session.commit()
        authorization = f"Bearer {secret}"
    headers = {"Authorization": authorization} if authorization else {}

    response = client.get(
        "/admin/v1/users?email=ada@example.com",
        headers={**headers, "User-Agent": "probe/1", "X-Forwarded-For": "203.0.113.9"},
    )

    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_admin_key"
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="authsvc", error="invalid_token"' if outcome else 'Bearer realm="authsvc"'
    )
    rows = connection.execute(
        select(
            AuditEvent.outcome, AuditEvent.admin_key_id, AuditEvent.ip, AuditEvent.user_agent
        ).where(AuditEvent.type == "admin.auth")
    ).all()
    if outcome is None:
        assert rows == []
    else:
        assert [tuple(r) for r in rows] == [(outcome, key_id, "127.0.0.1", "probe/1")]


def test_revoking_a_key_twice_and_an_unknown_key(connection):
    with DbSession(bind=connection, join_transaction_mode="create_savepoint") as session:
        key_id, _ = admin.create_key(session, name="ci", now=utcnow())
        assert admin.revoke_key(session, key_id=key_id, now=utcnow()) is True
        assert admin.revoke_key(session, key_id=key_id, now=utcnow()) is False
        with pytest.raises(NotFound):
            admin.revoke_key(session, key_id="no-such-key", now=utcnow())
        session.flush()
        types = session.scalars(
            select(AuditEvent.type).where(AuditEvent.admin_key_id == key_id)
        ).all()
        assert sorted(types) == ["admin.key_created", "admin.key_revoked"]
        [view] = [k for k in admin.list_keys(session) if k.id == key_id]
        assert view.revoked_at is not None and view.name == "ci"


def test_admin_actions_are_audited_with_the_key(client, as_admin, connection):
    created = create(client, as_admin, email="ada@example.com", password=PASSWORD).get_json()
    client.post(f"/admin/v1/users/{created['id']}/disable", headers=as_admin)
    key_id = connection.scalar(select(AdminKey.id))

    rows = connection.execute(
        select(AuditEvent.type, AuditEvent.admin_key_id, AuditEvent.user_id)
        .where(AuditEvent.type.like("admin.user_%"))
        .order_by(AuditEvent.id)
    ).all()

    assert [tuple(r) for r in rows] == [
        ("admin.user_created", key_id, created["id"]),
        ("admin.user_disabled", key_id, created["id"]),
    ]
    assert connection.scalar(select(AdminKey.last_used_at)) is not None


def test_looking_an_account_up_is_audited_with_the_key(api, client, as_admin, connection):
    created = create(client, as_admin, email="ada@example.com", password=PASSWORD).get_json()
    key_id = connection.scalar(select(AdminKey.id))

    client.get("/admin/v1/users", query_string={"email": "Ada@example.com"}, headers=as_admin)
    client.get("/admin/v1/users", query_string={"email": "bob@example.com"}, headers=as_admin)
    client.get("/admin/v1/users", query_string={"email": "not an email"}, headers=as_admin)
    client.get(f"/admin/v1/users/{created['id']}", headers=as_admin)
    client.get("/admin/v1/users/no-such-user", headers=as_admin)

    rows = connection.execute(
        select(AuditEvent.type, AuditEvent.outcome, AuditEvent.admin_key_id, AuditEvent.user_id)
        .where(AuditEvent.type.in_(["admin.user_lookup", "admin.user_viewed"]))
        .order_by(AuditEvent.id)
    ).all()
    assert [tuple(r) for r in rows] == [
        ("admin.user_lookup", "found", key_id, created["id"]),
        ("admin.user_lookup", "not_found", key_id, None),
        ("admin.user_lookup", "not_found", key_id, None),
        ("admin.user_viewed", "found", key_id, created["id"]),
        ("admin.user_viewed", "not_found", key_id, None),
    ]
    # An address that has no account is kept as a keyed hash only, as for failed logins.
    hashes = connection.scalars(
        select(AuditEvent.email_hash).where(AuditEvent.type == "admin.user_lookup")
    ).all()
    assert len(hashes[0]) == len(hashes[1]) == 64 and hashes[0] != hashes[1]
    assert hashes[2] is None
    assert "bob@example.com" not in str(connection.scalars(select(AuditEvent.details)).all())
    # An operator's lookup is not one of the user's own security events.
    token = api.tokens("ada@example.com", PASSWORD)["access_token"]
    trail = client.get("/v1/me/security-events", headers=api.bearer(token)).get_json()["events"]
    assert not {"admin.user_lookup", "admin.user_viewed"} & {e["type"] for e in trail}


def _find(client, authorization: str, ip: str):
    return client.get(
        "/admin/v1/users?email=ada@example.com",
        headers={"Authorization": authorization},
        environ_base={"REMOTE_ADDR": ip},
    )


def test_failed_admin_keys_are_throttled_per_client_ip(client, connection, as_admin):
    """Ten wrong keys a minute from one client, then 429 for everything it presents, the right
    key too (else a refusal would tell a guessed key from a wrong one); each refusal is one
    ratelimit.hit event, not another admin.auth."""
    guesses = [_find(client, f"Bearer ak_guess{i}", "203.0.113.7") for i in range(12)]
    right_key = _find(client, as_admin["Authorization"], "203.0.113.7")

    assert [g.status_code for g in guesses[:10]] == [401] * 10
    for refused in [*guesses[10:], right_key]:
        assert refused.status_code == 429
        assert refused.mimetype == "application/problem+json"
        assert refused.get_json()["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
    events = connection.execute(
        select(AuditEvent.type, AuditEvent.outcome, AuditEvent.details)
        .where(AuditEvent.type.in_(["admin.auth", "ratelimit.hit"]))
        .order_by(AuditEvent.id)
    ).all()
    limit_hit = ("ratelimit.hit", "admin_key_failures", '{"action": "admin_auth"}')
    assert [tuple(e) for e in events] == [("admin.auth", "unknown_key", "{}")] * 10 + [
        limit_hit
    ] * 3
    # Another client, with the right key or a wrong one, is not affected.
    assert _find(client, as_admin["Authorization"], "203.0.113.8").status_code == 200
    assert _find(client, "Bearer ak_guess", "203.0.113.8").status_code == 401


def test_successful_admin_requests_do_not_count_towards_the_limit(client, as_admin):
    for _ in range(12):
        assert _find(client, as_admin["Authorization"], "203.0.113.7").status_code == 200

    assert _find(client, "Bearer ak_guess", "203.0.113.7").status_code == 401
