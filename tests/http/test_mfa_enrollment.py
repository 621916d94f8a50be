"""AUTHSVC_REQUIRE_MFA: a login without a factor gets an enrollment token that is good only for
enrolling TOTP, and confirming the factor with it completes the login."""

from __future__ import annotations

import jwt
import pytest
from sqlalchemy import func, select, update

from authsvc.db import utcnow
from authsvc.models import TotpFactor, User
from tests.conftest import replace_settings
from tests.http.test_mfa_totp import PASSWORD, oathtool_code


@pytest.fixture
def settings(settings):
    return replace_settings(settings, require_mfa=True)


def enrollment_token(api) -> str:
    api.register()
    body = api.login("ada@example.com", PASSWORD).get_json()
    assert body["status"] == "mfa_enrollment_required"
    return body["enrollment_token"]


def test_enrolling_with_the_enrollment_token_completes_the_login(api, client, mailbox):
    headers = api.bearer(enrollment_token(api))
    pending = client.post("/v1/me/mfa/totp", json={"name": "Phone"}, headers=headers)
    assert pending.status_code == 201
    secret = pending.get_json()["secret"]

    response = client.post(
        f"/v1/me/mfa/totp/{pending.get_json()['factor_id']}/confirm",
        json={"code": oathtool_code(secret)},
        headers=headers,
    )

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "authenticated"
    assert body["factor"]["name"] == "Phone"
    assert len(body["recovery_codes"]) == 10
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["amr"] == ["pwd", "otp", "mfa"]
    me = client.get("/v1/me", headers=api.bearer(body["access_token"]))
    assert me.get_json()["mfa_methods"] == ["totp", "recovery_code"]
    # The enrollment token is spent.
    again = client.post("/v1/me/mfa/totp", headers=headers)
    assert (again.status_code, again.get_json()["code"]) == (401, "unauthenticated")
    # The next login asks for the factor, not for an enrollment.
    assert api.login("ada@example.com", PASSWORD).get_json()["status"] == "mfa_required"
    api.drain()
    assert mailbox.last("ada@example.com")["Subject"] == "A second factor was added to your account"


def test_the_enrollment_token_opens_only_the_enrollment_routes(api, client):
    headers = api.bearer(enrollment_token(api))

    for method, url in (
        ("get", "/v1/me"),
        ("get", "/v1/me/mfa"),
        ("get", "/v1/me/sessions"),
        ("post", "/v1/me/recovery-codes"),
        ("delete", "/v1/me/mfa/x"),
    ):
        response = getattr(client, method)(url, headers=headers)
        assert response.status_code == 401, url
        assert response.get_json()["code"] == "unauthenticated"


def test_a_wrong_code_keeps_the_enrollment_token_alive(api, client):
    headers = api.bearer(enrollment_token(api))
    pending = client.post("/v1/me/mfa/totp", headers=headers).get_json()
    url = f"/v1/me/mfa/totp/{pending['factor_id']}/confirm"
    valid = {oathtool_code(pending["secret"], offset_steps=o) for o in (-1, 0, 1)}
    wrong = next(f"{n:06d}" for n in range(100) if f"{n:06d}" not in valid)

    refused = client.post(url, json={"code": wrong}, headers=headers)
    assert (refused.status_code, refused.get_json()["code"]) == (400, "invalid_code")
    malformed = client.post(url, json={"code": "abc"}, headers=headers)
    assert (malformed.status_code, malformed.get_json()["code"]) == (400, "invalid_request")

    done = client.post(url, json={"code": oathtool_code(pending["secret"])}, headers=headers)
    assert done.status_code == 200
    assert done.get_json()["status"] == "authenticated"


def test_an_enrollment_token_cannot_confirm_another_users_factor(api, client):
    ada_token = enrollment_token(api)
    api.register("bob@example.com")
    bob = api.bearer(api.login("bob@example.com", PASSWORD).get_json()["enrollment_token"])
    bobs = client.post("/v1/me/mfa/totp", headers=bob).get_json()

    response = client.post(
        f"/v1/me/mfa/totp/{bobs['factor_id']}/confirm",
        json={"code": oathtool_code(bobs["secret"])},
        headers=api.bearer(ada_token),
    )

    assert (response.status_code, response.get_json()["code"]) == (404, "not_found")
    # Nothing was spent: Ada's token still works for her own enrollment.
    assert client.post("/v1/me/mfa/totp", headers=api.bearer(ada_token)).status_code == 201


def test_a_password_reset_ends_a_pending_enrollment(api, client, mailbox):
    # Whoever learned the old password got this token; the owner's reset must take it away
    # before it can enroll a factor the owner does not hold.
    headers = api.bearer(enrollment_token(api))
    client.post("/v1/password/forgot", json={"email": "ada@example.com"})
    api.drain()
    reset = client.post(
        "/v1/password/reset",
        json={
            "token": mailbox.token("ada@example.com", "reset-password"),
            "new_password": "the owner's new horse 7",
        },
    )
    assert reset.status_code == 204

    response = client.post("/v1/me/mfa/totp", json={"name": "Attacker"}, headers=headers)

    assert (response.status_code, response.get_json()["code"]) == (401, "unauthenticated")


@pytest.mark.parametrize("change", ["password_invalidated_at", "disabled_at"])
def test_an_enrollment_token_dies_with_its_password_or_its_account(api, client, connection, change):
    # A breach response invalidated the password (or an admin disabled the account) after
    # the login that issued the token: it starts no enrollment, like every other login step.
    headers = api.bearer(enrollment_token(api))
    connection.execute(update(User).values({change: utcnow()}))

    response = client.post("/v1/me/mfa/totp", json={"name": "Phone"}, headers=headers)

    assert (response.status_code, response.get_json()["code"]) == (401, "unauthenticated")
    assert connection.scalar(select(func.count()).select_from(TotpFactor)) == 0


def test_an_enrollment_token_dies_once_the_account_has_a_factor(api, client):
    # The owner switches phones: removes the old app, then adds the new one from the session
    # that removed it. Meanwhile someone who knows the password signed in to an account
    # without a factor and got an enrollment token; once the owner's new factor is active,
    # that token must not add a factor of its own and sign in past the owner's.
    owner = api.bearer(enrollment_token(api))
    first = client.post("/v1/me/mfa/totp", headers=owner).get_json()
    signed_in = client.post(
        f"/v1/me/mfa/totp/{first['factor_id']}/confirm",
        json={"code": oathtool_code(first["secret"])},
        headers=owner,
    ).get_json()
    owner = api.bearer(signed_in["access_token"])
    assert client.delete(f"/v1/me/mfa/{first['factor_id']}", headers=owner).status_code == 204
    attacker = api.login("ada@example.com", PASSWORD).get_json()
    assert attacker["status"] == "mfa_enrollment_required"
    attacker = api.bearer(attacker["enrollment_token"])
    theirs = client.post("/v1/me/mfa/totp", json={"name": "Attacker"}, headers=attacker)
    assert theirs.status_code == 201
    new = client.post("/v1/me/mfa/totp", json={"name": "New phone"}, headers=owner).get_json()
    confirmed = client.post(
        f"/v1/me/mfa/totp/{new['factor_id']}/confirm",
        json={"code": oathtool_code(new["secret"])},
        headers=owner,
    )
    assert confirmed.status_code == 200

    confirm = client.post(
        f"/v1/me/mfa/totp/{theirs.get_json()['factor_id']}/confirm",
        json={"code": oathtool_code(theirs.get_json()["secret"])},
        headers=attacker,
    )
    another = client.post("/v1/me/mfa/totp", headers=attacker)
    key = client.post(
        "/v1/me/mfa/webauthn/registration-options", json={"name": "Key"}, headers=attacker
    )

    assert confirm.status_code == 401, confirm.get_json()
    assert confirm.get_json()["code"] == "unauthenticated"
    assert (another.status_code, another.get_json()["code"]) == (401, "unauthenticated")
    assert (key.status_code, key.get_json()["code"]) == (401, "unauthenticated")
    assert [f["name"] for f in client.get("/v1/me/mfa", headers=owner).get_json()["factors"]] == [
        "New phone"
    ]


def test_the_notice_of_a_removed_last_factor_says_a_new_one_will_be_asked_for(api, client):
    # With AUTHSVC_REQUIRE_MFA the next login asks for an enrollment, not for the password alone:
    # the notice must not tell the owner that the password is now all it takes.
    headers = api.bearer(enrollment_token(api))
    pending = client.post("/v1/me/mfa/totp", headers=headers).get_json()
    signed_in = client.post(
        f"/v1/me/mfa/totp/{pending['factor_id']}/confirm",
        json={"code": oathtool_code(pending["secret"])},
        headers=headers,
    ).get_json()

    removed = client.delete(
        f"/v1/me/mfa/{pending['factor_id']}", headers=api.bearer(signed_in["access_token"])
    )

    assert removed.status_code == 204
    api.drain()
    notice = api.mailbox.last("ada@example.com")
    assert notice["Subject"] == "A second factor was removed from your account"
    body = notice.get_content()
    assert "recovery codes were deleted" in body
    assert "only your password" not in body
    assert "ask you to add a new second factor" in body
    assert api.login("ada@example.com", PASSWORD).get_json()["status"] == "mfa_enrollment_required"
