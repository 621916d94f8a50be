"""Security keys among the user's factors: recovery codes, /v1/me/mfa, forced enrollment and
the password reset's second factor."""

from __future__ import annotations

import dataclasses

import jwt
from sqlalchemy import select

from authsvc.models import WebauthnCredential
from tests.conftest import runtime
from tests.http.test_mfa_totp import enable_totp
from tests.support_webauthn import (
    PASSWORD,
    SoftAuthenticator,
    b64url,
    bearer,
    enroll,
    signed_in,
)


def test_the_first_key_brings_recovery_codes_and_the_second_does_not(client, api):
    access = signed_in(api)
    first = enroll(client, access, SoftAuthenticator(), name="one")
    assert len(first["recovery_codes"]) >= 8
    second = enroll(client, access, SoftAuthenticator(), name="two")
    assert "recovery_codes" not in second
    login = api.login("ada@example.com", PASSWORD).get_json()
    assert login["methods"] == ["webauthn", "recovery_code"]


def test_keys_are_listed_renamed_and_removed_through_me_mfa(app, client, api, mailbox):
    access = signed_in(api)
    factor = enroll(client, access, SoftAuthenticator(), name="Blue key")
    listed = client.get("/v1/me/mfa", headers=bearer(access)).get_json()
    assert [(f["id"], f["type"], f["name"]) for f in listed["factors"]] == [
        (factor["id"], "webauthn", "Blue key")
    ]
    response = client.patch(
        f"/v1/me/mfa/{factor['id']}", json={"name": "Red key"}, headers=bearer(access)
    )
    assert response.status_code == 200
    assert response.get_json()["name"] == "Red key"
    response = client.delete(f"/v1/me/mfa/{factor['id']}", headers=bearer(access))
    assert response.status_code == 204
    with runtime(app).sessionmaker() as session:
        assert session.scalar(select(WebauthnCredential)) is None
    assert api.login("ada@example.com", PASSWORD).get_json()["status"] == "authenticated"


def test_another_users_key_is_not_found(client, api):
    ada = signed_in(api, "ada@example.com")
    factor = enroll(client, ada, SoftAuthenticator())
    bob = signed_in(api, "bob@example.com")
    for response in (
        client.patch(f"/v1/me/mfa/{factor['id']}", json={"name": "x"}, headers=bearer(bob)),
        client.delete(f"/v1/me/mfa/{factor['id']}", headers=bearer(bob)),
    ):
        assert response.status_code == 404
        assert response.get_json()["code"] == "not_found"


def test_forced_enrollment_with_a_key_completes_the_login(app, client, api):
    api.register("ada@example.com", PASSWORD)
    rt = runtime(app)
    rt.settings = dataclasses.replace(rt.settings, require_mfa=True)
    rt.deps = dataclasses.replace(rt.deps, settings=rt.settings)
    login = api.login("ada@example.com", PASSWORD).get_json()
    assert login["status"] == "mfa_enrollment_required"
    token = login["enrollment_token"]
    options = client.post(
        "/v1/me/mfa/webauthn/registration-options", json={"name": "k"}, headers=bearer(token)
    )
    assert options.status_code == 200
    credential = SoftAuthenticator().register(options.get_json())
    response = client.post(
        "/v1/me/mfa/webauthn", json={"credential": credential}, headers=bearer(token)
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["type"] == "webauthn" and body["recovery_codes"]
    assert body["status"] == "authenticated"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["amr"] == ["pwd", "hwk", "mfa"]
    again = client.post(
        "/v1/me/mfa/webauthn/registration-options", json={"name": "k"}, headers=bearer(token)
    )
    assert again.status_code == 401  # the enrollment token is spent


def test_password_reset_asks_for_the_key(client, api, mailbox):
    key = SoftAuthenticator()
    enroll(client, signed_in(api), key)
    client.post("/v1/password/forgot", json={"email": "ada@example.com"})
    api.drain()
    token = mailbox.token("ada@example.com", "reset-password")
    response = client.post(
        "/v1/password/reset", json={"token": token, "new_password": "another horse 43"}
    )
    assert response.status_code == 401 and response.get_json()["code"] == "mfa_required"
    options = client.post("/v1/password/reset/webauthn-options", json={"token": token})
    assert options.status_code == 200
    assert [c["id"] for c in options.get_json()["allowCredentials"]] == [b64url(key.only_key())]
    response = client.post(
        "/v1/password/reset",
        json={
            "token": token,
            "new_password": "another horse 43",
            "webauthn": key.assertion(options.get_json()),
        },
    )
    assert response.status_code == 204, response.get_json()
    assert api.login("ada@example.com", "another horse 43").get_json()["status"] == ("mfa_required")


def test_reset_options_need_a_live_reset_token(client):
    response = client.post("/v1/password/reset/webauthn-options", json={"token": "rp_nope"})
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_token"


def test_the_listing_says_which_keys_are_passkeys(client, api):
    """A passkey (discoverable and user-verifying) signs in without a password; the listing
    says so of each key, as the registration's 201 did, and of no authenticator app."""
    app_factor = enable_totp(api)
    access = app_factor["access_token"]
    passkey = enroll(client, access, SoftAuthenticator(), name="Passkey")
    plain = enroll(client, access, SoftAuthenticator(), name="Plain", rk=False)
    unverified = enroll(client, access, SoftAuthenticator(), name="No PIN", uv=False)
    assert (passkey["passkey"], plain["passkey"], unverified["passkey"]) == (True, False, False)
    listed = client.get("/v1/me/mfa", headers=bearer(access)).get_json()["factors"]
    assert [(f["type"], f["name"], f.get("passkey")) for f in listed] == [
        ("totp", "Authenticator app", False),
        ("webauthn", "Passkey", True),
        ("webauthn", "Plain", False),
        ("webauthn", "No PIN", False),
    ]
    renamed = client.patch(
        f"/v1/me/mfa/{passkey['id']}", json={"name": "Still a passkey"}, headers=bearer(access)
    )
    assert renamed.status_code == 200 and renamed.get_json()["passkey"] is True
