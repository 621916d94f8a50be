"""POST /v1/login: tokens that apps verify offline, uniform failures, rehash, NFKC."""

from __future__ import annotations

import dataclasses
import time
import unicodedata

import bcrypt
import jwt
import pytest
from sqlalchemy import select, update

from authsvc.app import create_app
from authsvc.models import AuditEvent, User
from tests.conftest import ContractClient, every_slot_taken_after_the_check, runtime

PASSWORD = "correct horse 42"


def verify_offline(client, token: str, settings) -> dict:
    """What a client app does: fetch the JWKS once and check the token without calling us."""
    jwks = jwt.PyJWKSet.from_dict(client.get("/.well-known/jwks.json").get_json())
    kid = jwt.get_unverified_header(token)["kid"]
    [key] = [k for k in jwks.keys if k.key_id == kid]
    return jwt.decode(
        token,
        key.key,
        algorithms=["EdDSA"],
        audience=settings.jwt_audience,
        issuer=settings.public_url,
        options={"require": ["iss", "sub", "aud", "iat", "exp"]},
    )


def test_login_returns_tokens(api, client):
    api.register()

    response = api.login("ada@example.com", PASSWORD)

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"status", "access_token", "refresh_token", "token_type", "expires_in"}
    assert body["status"] == "authenticated"
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert body["refresh_token"].startswith("rt_")


def test_access_token_verifies_offline_with_the_jwks(api, client, settings):
    api.register()
    before = int(time.time())
    body = api.tokens()
    after = int(time.time())

    claims = verify_offline(client, body["access_token"], settings)

    me = client.get("/v1/me", headers=api.bearer(body["access_token"])).get_json()
    [session] = client.get("/v1/me/sessions", headers=api.bearer(body["access_token"])).get_json()[
        "sessions"
    ]
    assert claims["iss"] == "http://authsvc.test"
    assert claims["sub"] == me["id"]
    assert claims["aud"] == settings.jwt_audience
    assert before <= claims["iat"] <= after
    assert claims["exp"] == claims["iat"] + 600
    assert before <= claims["auth_time"] <= after
    assert claims["sid"] == session["id"]
    assert claims["amr"] == ["pwd"]
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "EdDSA"


def test_a_tampered_access_token_does_not_verify(api, client, settings):
    api.register()
    token = api.tokens()["access_token"]
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"

    with pytest.raises(jwt.InvalidSignatureError):
        verify_offline(client, forged, settings)
    assert client.get("/v1/me", headers=api.bearer(forged)).status_code == 401


@pytest.mark.parametrize(
    "email",
    [
        "ada@example.com",
        "ADA@example.com",
        " ada@EXAMPLE.COM",
        "\uff41\uff44\uff41@example.com",
    ],  # the last one in full-width letters
)
def test_email_is_matched_after_normalisation(api, email):
    api.register()

    assert api.login(email, PASSWORD).get_json()["status"] == "authenticated"


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("ada@example.com", "wrong horse 42"),
        ("nobody@example.com", PASSWORD),
        ("ada@example.com", "correct horse 42 "),
        ("ada@example.com", "CORRECT HORSE 42"),
    ],
    ids=["wrong-password", "unknown-email", "trailing-space", "case"],
)
def test_failures_answer_invalid_credentials(api, email, password, connection):
    api.register()

    response = api.login(email, password)

    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "invalid_credentials"
    assert "WWW-Authenticate" not in response.headers  # no HTTP authentication scheme here
    assert "login.failure" in connection.scalars(select(AuditEvent.type)).all()


def test_a_password_typed_in_another_normal_form_logs_in(api):
    nfd = unicodedata.normalize("NFD", "Café crème brûlée")
    nfc = unicodedata.normalize("NFC", "Café crème brûlée")
    assert nfd != nfc
    api.register("ada@example.com", nfd)

    assert api.login("ada@example.com", nfc).get_json()["status"] == "authenticated"
    assert api.login("ada@example.com", nfd).get_json()["status"] == "authenticated"


def test_compatibility_forms_are_the_same_password(api):
    fullwidth = "\uff46\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48"  # NFKC: "fullwidth"
    api.register("ada@example.com", f"{fullwidth} horse 42")

    assert api.login("ada@example.com", "fullwidth horse 42").get_json()["status"] == (
        "authenticated"
    )


def argon2_params(phc: str) -> str:
    return phc.split("$")[3]


def test_login_rehashes_when_argon2_parameters_change(api, settings, connection):
    api.register()
    stored = connection.scalar(select(User.password_hash))
    assert argon2_params(stored) == "m=1024,t=1,p=1"
    stronger = dataclasses.replace(settings, argon2_time_cost=2, argon2_memory_kib=2048)
    app2 = create_app(stronger, bind=connection)
    app2.test_client_class = ContractClient
    client2 = app2.test_client()

    response = client2.post("/v1/login", json={"email": "ada@example.com", "password": PASSWORD})

    assert response.get_json()["status"] == "authenticated"
    rehashed = connection.scalar(select(User.password_hash))
    assert rehashed != stored
    assert argon2_params(rehashed) == "m=2048,t=2,p=1"
    # The new hash still verifies, here and on the old settings (which rehash it back).
    again = client2.post("/v1/login", json={"email": "ada@example.com", "password": PASSWORD})
    assert again.get_json()["status"] == "authenticated"
    assert connection.scalar(select(User.password_hash)) == rehashed
    assert api.login("ada@example.com", PASSWORD).get_json()["status"] == "authenticated"
    assert argon2_params(connection.scalar(select(User.password_hash))) == "m=1024,t=1,p=1"


def test_a_rehash_that_finds_no_hashing_slot_is_left_to_a_later_login(
    api, settings, connection, monkeypatch
):
    # The password was verified (and counted against the account's daily checks); every
    # hashing slot is taken before its rehash. The login used to answer 503 overloaded, so a
    # correct password was refused and its retries spent more checks on a busy server.
    api.register()
    stored = connection.scalar(select(User.password_hash))
    stronger = dataclasses.replace(settings, argon2_time_cost=2, argon2_memory_kib=2048)
    app2 = create_app(stronger, bind=connection)
    app2.test_client_class = ContractClient
    client2 = app2.test_client()
    with every_slot_taken_after_the_check(runtime(app2).deps.hasher, monkeypatch):
        busy = client2.post("/v1/login", json={"email": "ada@example.com", "password": PASSWORD})

    assert busy.status_code == 200
    assert busy.get_json()["status"] == "authenticated"
    assert connection.scalar(select(User.password_hash)) == stored  # still good, kept
    later = client2.post("/v1/login", json={"email": "ada@example.com", "password": PASSWORD})
    assert later.get_json()["status"] == "authenticated"
    assert argon2_params(connection.scalar(select(User.password_hash))) == "m=2048,t=2,p=1"


@pytest.mark.parametrize(
    ("password", "status"), [(PASSWORD, 200), ("not the password", 401)], ids=["right", "wrong"]
)
def test_timing_a_newly_met_hash_cost_that_finds_no_slot_answers_as_without(
    api, app, connection, monkeypatch, password, status
):
    # An account imported before costs were recorded: its first check records the cost and
    # times a check of it, which needs a hashing slot. Every slot is taken once the password
    # was checked. That timing is optional (the next refresh does it): it used to answer 503
    # overloaded, refusing a proven password, and a wrong one with an answer that an unknown
    # email never gets at that point.
    api.register()
    old = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5)).decode()
    connection.execute(update(User).values(password_hash=old))
    with every_slot_taken_after_the_check(runtime(app).deps.hasher, monkeypatch):
        answer = api.login("ada@example.com", password)

    assert answer.status_code == status


def test_a_failed_login_does_not_rehash(api, settings, connection):
    api.register()
    stored = connection.scalar(select(User.password_hash))
    app2 = create_app(dataclasses.replace(settings, argon2_time_cost=2), bind=connection)

    response = app2.test_client().post(
        "/v1/login", json={"email": "ada@example.com", "password": "nope nope"}
    )

    assert response.status_code == 401
    assert connection.scalar(select(User.password_hash)) == stored


def test_each_login_is_a_new_session(api, client):
    api.register()
    first, second = api.tokens(), api.tokens()

    assert first["refresh_token"] != second["refresh_token"]
    sessions = client.get("/v1/me/sessions", headers=api.bearer(second["access_token"])).get_json()[
        "sessions"
    ]
    assert len(sessions) == 2


def test_login_audits_success_without_secrets(api, connection):
    api.register()
    body = api.tokens()

    rows = connection.execute(select(AuditEvent).where(AuditEvent.type == "login.success")).all()

    assert len(rows) == 1
    dumped = repr(tuple(rows[0]))
    assert PASSWORD not in dumped
    assert body["refresh_token"] not in dumped
    assert body["access_token"] not in dumped
