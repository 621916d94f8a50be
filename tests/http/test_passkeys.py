"""Passwordless login: POST /v1/passkeys/login-options and POST /v1/passkeys/login."""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import func, select, update

from authsvc.app import rate_limit_policies
from authsvc.crypto import webauthn as wa
from authsvc.db import utcnow
from authsvc.models import AuditEvent, User, WebauthnChallenge, WebauthnCredential
from authsvc.ratelimit import RateLimiter
from authsvc.services import webauthn
from tests.conftest import runtime
from tests.support_webauthn import (
    CROSS_ORIGIN_FRAMES,
    PASSWORD,
    UNPARSABLE_ASSERTIONS,
    SoftAuthenticator,
    b64url,
    enroll,
    mfa_token,
    signed_in,
)


def _options(client):
    response = client.post("/v1/passkeys/login-options")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _login(client, options, credential):
    return client.post(
        "/v1/passkeys/login",
        json={"challenge_id": options["challenge_id"], "credential": credential},
    )


def _failure_reasons(app):
    with runtime(app).sessionmaker() as session:
        return [
            e.details
            for e in session.scalars(select(AuditEvent).where(AuditEvent.type == "login.passkey"))
        ]


def _challenge_rows(app):
    with runtime(app).sessionmaker() as session:
        return session.scalar(select(func.count()).select_from(WebauthnChallenge))


def _policy(app, **changes):
    rt = runtime(app)
    rt.settings = dataclasses.replace(rt.settings, **changes)
    rt.deps = dataclasses.replace(rt.deps, settings=rt.settings)


@pytest.fixture
def passkey(client, api):
    key = SoftAuthenticator()
    enroll(client, signed_in(api), key)
    return key


def test_options_name_nobody(client):
    options = _options(client)
    assert options["allowCredentials"] == []
    assert options["userVerification"] == "required"
    assert options["challenge_id"]
    assert _options(client)["challenge"] != options["challenge"]


def test_options_write_no_row(app, client, passkey):
    # Anonymous, throttled per address only: many addresses could pile rows up without ever
    # holding a passkey. The challenge_id carries what the login checks.
    before = _challenge_rows(app)
    for _ in range(3):
        _options(client)
    assert _challenge_rows(app) == before


def test_a_passkey_alone_logs_in(client, passkey):
    options = _options(client)
    response = _login(client, options, passkey.assertion(options))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "authenticated"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["amr"] == ["hwk", "mfa"]
    me = client.get("/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.get_json()["email"] == "ada@example.com"


def test_a_synced_passkey_logs_in_with_swk(client, api):
    key = SoftAuthenticator(backup_eligible=True, counter=False)
    enroll(client, signed_in(api), key)
    options = _options(client)
    body = _login(client, options, key.assertion(options)).get_json()
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["amr"] == [
        "swk",
        "mfa",
    ]


def test_synced_passkeys_can_be_refused_by_policy(app, client, api):
    key = SoftAuthenticator(backup_eligible=True)
    enroll(client, signed_in(api), key)
    _policy(app, webauthn_allow_backup_eligible=False)
    options = _options(client)
    response = _login(client, options, key.assertion(options))
    assert response.status_code == 401
    assert '"backup_eligible"' in _failure_reasons(app)[-1]


def test_a_non_discoverable_key_is_a_second_factor_only(app, client, api):
    key = SoftAuthenticator(resident=False)
    factor = enroll(client, signed_in(api), key)
    assert factor["passkey"] is False
    options = _options(client)
    response = _login(client, options, key.assertion(options))
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_credentials"
    assert '"not_a_passkey"' in _failure_reasons(app)[-1]
    token = mfa_token(api)  # ... and still works after the password
    mfa_options = client.post("/v1/login/mfa/webauthn-options", json={"mfa_token": token})
    response = client.post(
        "/v1/login/mfa",
        json={"mfa_token": token, "webauthn": key.assertion(mfa_options.get_json())},
    )
    assert response.get_json()["status"] == "authenticated"


def test_a_key_registered_without_user_verification_is_not_a_passkey(app, client, api):
    key = SoftAuthenticator()
    factor = enroll(client, signed_in(api), key, uv=False)
    assert factor["passkey"] is False
    options = _options(client)
    assert _login(client, options, key.assertion(options)).status_code == 401


def test_an_assertion_without_user_verification_is_refused(app, client, passkey):
    options = _options(client)
    response = _login(client, options, passkey.assertion(options, uv=False))
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_credentials"


def test_backed_up_without_backup_eligibility_is_refused(app, client, passkey):
    # WebAuthn L3 7.2: BS set without BE is a state no authenticator can be in.
    passkey.backed_up = True
    options = _options(client)
    response = _login(client, options, passkey.assertion(options))
    assert (response.status_code, response.get_json()["code"]) == (401, "invalid_credentials")
    assert '"not_verified"' in _failure_reasons(app)[-1]


def test_an_assertion_without_user_presence_is_refused(app, client, passkey):
    options = _options(client)
    response = _login(client, options, passkey.assertion(options, up=False))
    assert (response.status_code, response.get_json()["code"]) == (401, "invalid_credentials")
    assert '"not_verified"' in _failure_reasons(app)[-1]


def test_an_unknown_credential_is_refused(app, client, passkey):
    stranger = SoftAuthenticator()
    stranger.register(
        {"rp": {"id": "localhost"}, "challenge": "AAAA", "user": {"id": b64url(b"x" * 32)}}
    )
    options = _options(client)
    response = _login(client, options, stranger.assertion(options))
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_credentials"
    assert '"unknown_credential"' in _failure_reasons(app)[-1]


def test_a_wrong_user_handle_is_refused(app, client, passkey):
    passkey.keys[passkey.only_key()].user_handle = b"y" * 32
    options = _options(client)
    response = _login(client, options, passkey.assertion(options))
    assert response.status_code == 401
    assert '"user_handle_mismatch"' in _failure_reasons(app)[-1]


@pytest.mark.parametrize("framing", CROSS_ORIGIN_FRAMES, ids="+".join)
def test_an_answer_from_a_cross_origin_frame_is_refused(app, client, passkey, framing):
    options = _options(client)
    response = _login(client, options, passkey.assertion(options, extra_client_data=framing))
    assert (response.status_code, response.get_json()["code"]) == (401, "invalid_credentials")
    assert '"cross_origin"' in _failure_reasons(app)[-1]


@pytest.mark.parametrize("case", sorted(UNPARSABLE_ASSERTIONS))
def test_an_answer_that_does_not_parse_is_400(app, client, passkey, case):
    # Refused before any account is looked at, so the answer says nothing about one.
    options = _options(client)
    response = _login(client, options, UNPARSABLE_ASSERTIONS[case](passkey.assertion(options)))
    body = response.get_json()
    assert (response.status_code, body.get("code"), body.get("reason")) == (
        400,
        "invalid_webauthn_response",
        "malformed",
    )
    assert '"malformed"' in _failure_reasons(app)[-1]


def test_a_missing_user_handle_is_refused(app, client, passkey):
    options = _options(client)
    response = _login(client, options, passkey.assertion(options, user_handle=False))
    assert response.status_code == 401


def test_a_challenge_is_accepted_once(app, client, passkey):
    options = _options(client)
    credential = passkey.assertion(options)
    assert _login(client, options, credential).status_code == 200
    response = _login(client, options, credential)
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_challenge"
    assert '"invalid_challenge"' in _failure_reasons(app)[-1]  # a replay is in the trail


def test_a_login_spends_its_challenge_in_one_row_that_outlives_its_id(app, client, passkey):
    before = _challenge_rows(app)
    options = _options(client)
    assert _login(client, options, passkey.assertion(options)).status_code == 200
    assert _challenge_rows(app) == before + 1
    digest = wa.challenge_digest(wa.from_b64url(options["challenge"]))
    with runtime(app).sessionmaker() as session:
        row = session.scalar(
            select(WebauthnChallenge).where(WebauthnChallenge.challenge_hash == digest)
        )
    kept = runtime(app).settings.webauthn_challenge_ttl + webauthn.SPENT_PASSKEY_KEPT
    assert (row.purpose, row.user_id) == ("passkey", None)
    assert row.used_at is not None
    assert row.used_at + kept - timedelta(seconds=1) < row.expires_at <= row.used_at + kept


def test_a_refused_attempt_writes_only_its_audit_event(app, client, passkey):
    options = _options(client)
    before, trail = _challenge_rows(app), len(_failure_reasons(app))
    response = _login(client, options, passkey.assertion(options, uv=False))
    assert response.status_code == 401
    assert (_challenge_rows(app), len(_failure_reasons(app))) == (before, trail + 1)
    # Nothing was spent: the challenge still answers once, and only once.
    credential = passkey.assertion(options)
    assert _login(client, options, credential).status_code == 200
    assert _login(client, options, credential).get_json()["code"] == "invalid_challenge"


def _with_expiry(challenge_id, expires_at):
    raw = wa.from_b64url(challenge_id)
    return wa.b64url(expires_at.to_bytes(8, "big") + raw[8:])


def _bit_flipped(challenge_id, index):
    raw = bytearray(wa.from_b64url(challenge_id))
    raw[index] ^= 1
    return wa.b64url(bytes(raw))


ALTERED_IDS = {
    "forged with another key": lambda options: wa.challenge_token(
        os.urandom(32),
        challenge=wa.from_b64url(options["challenge"]),
        expires_at=int(utcnow().timestamp()) + 3600,
    ),
    "expiry moved later": lambda options: _with_expiry(
        options["challenge_id"], int(utcnow().timestamp()) + 3600
    ),
    "expiry bit flipped": lambda options: _bit_flipped(options["challenge_id"], 7),
    "mac bit flipped": lambda options: _bit_flipped(options["challenge_id"], -1),
    "truncated": lambda options: options["challenge_id"][:-2],
    "not base64url": lambda options: options["challenge_id"][:-1] + "*",
    "an id of a stored row": lambda options: os.urandom(16).hex(),
}


def _refusal(app, response):
    return response.status_code, response.get_json()["code"], _failure_reasons(app)[-1]


@pytest.mark.parametrize("case", sorted(ALTERED_IDS))
def test_a_forged_or_altered_challenge_id_is_refused_like_an_unknown_one(
    app, client, passkey, case
):
    options = _options(client)
    unknown = _refusal(
        app, _login(client, {**options, "challenge_id": "nope"}, passkey.assertion(options))
    )
    assert unknown[:2] == (400, "invalid_challenge")
    altered = {**options, "challenge_id": ALTERED_IDS[case](options)}
    response = _login(client, altered, passkey.assertion(options))
    assert _refusal(app, response) == unknown
    assert _login(client, options, passkey.assertion(options)).status_code == 200


def test_an_expired_challenge_id_is_refused_like_an_unknown_one(app, client, passkey, monkeypatch):
    options = _options(client)
    unknown = _refusal(
        app, _login(client, {**options, "challenge_id": "nope"}, passkey.assertion(options))
    )
    later = utcnow() + runtime(app).settings.webauthn_challenge_ttl
    monkeypatch.setattr("authsvc.http.webauthn.utcnow", lambda: later)
    response = _login(client, options, passkey.assertion(options))
    assert _refusal(app, response) == unknown


def test_a_challenge_id_must_match_the_signed_challenge(client, passkey):
    first, second = _options(client), _options(client)
    response = _login(client, second, passkey.assertion(first))
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_challenge"


def test_an_mfa_challenge_cannot_be_used_for_passkey_login(client, api, passkey):
    token = mfa_token(api)
    mfa_options = client.post(
        "/v1/login/mfa/webauthn-options", json={"mfa_token": token}
    ).get_json()
    options = {**_options(client), "challenge": mfa_options["challenge"]}
    response = _login(client, options, passkey.assertion(options))
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_challenge"


def test_a_disabled_account_cannot_log_in(app, client, passkey):
    with runtime(app).sessionmaker() as session, session.begin():
        session.execute(update(User).values(disabled_at=utcnow()))
    options = _options(client)
    response = _login(client, options, passkey.assertion(options))
    assert response.status_code == 401
    assert '"account_unavailable"' in _failure_reasons(app)[-1]


def test_an_account_whose_password_a_breach_response_invalidated_cannot_log_in(
    app, client, passkey
):
    # In invalidate mode only a mailed reset opens the account again: a passkey does not
    # stand in for it.
    with runtime(app).sessionmaker() as session, session.begin():
        session.execute(update(User).values(password_invalidated_at=utcnow()))
    options = _options(client)
    response = _login(client, options, passkey.assertion(options))
    assert response.status_code == 401
    assert '"account_unavailable"' in _failure_reasons(app)[-1]


def test_a_cloned_passkey_is_refused(app, client, passkey, mailbox, api):
    options = _options(client)
    assert _login(client, options, passkey.assertion(options)).status_code == 200
    options = _options(client)
    response = _login(client, options, passkey.assertion(options, sign_count=1))
    assert response.status_code == 401
    assert '"sign_count_regression"' in _failure_reasons(app)[-1]
    with runtime(app).sessionmaker() as session:
        assert session.scalar(select(WebauthnCredential)).counter_regression_at is not None
    api.drain()
    assert "went backwards" in mailbox.last("ada@example.com").get_content()


def test_a_forced_password_change_still_applies(app, client, passkey):
    with runtime(app).sessionmaker() as session, session.begin():
        session.execute(update(User).values(password_change_required=True))
    options = _options(client)
    body = _login(client, options, passkey.assertion(options)).get_json()
    assert body["status"] == "password_change_required"


def test_passkey_login_is_throttled_per_ip(app, client, passkey):
    _policy(app, limit_ip="2/minute")
    rt = runtime(app)
    rt.deps = dataclasses.replace(
        rt.deps,
        limiter=RateLimiter(rt.settings.rate_limit_storage_url, rate_limit_policies(rt.settings)),
    )
    rt.deps.limiter.reset()
    _options(client)
    _options(client)
    response = client.post("/v1/passkeys/login-options")
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    rt.deps.limiter.reset()


def test_password_login_of_a_passkey_user_still_asks_for_a_factor(api, passkey):
    response = api.login("ada@example.com", PASSWORD)
    assert response.get_json()["status"] == "mfa_required"


def test_two_ceremonies_opened_before_the_first_key_existed_both_log_in(client, api):
    # Each ceremony handed its authenticator a user handle; each key answers with its own.
    access = signed_in(api)
    headers = {"Authorization": f"Bearer {access}"}
    first, second = SoftAuthenticator(), SoftAuthenticator()
    opened = [
        client.post(
            "/v1/me/mfa/webauthn/registration-options", json={"name": name}, headers=headers
        ).get_json()
        for name in ("Laptop", "Phone")
    ]
    for key, options in zip((first, second), opened, strict=True):
        credential = key.register(options)
        stored = client.post(
            "/v1/me/mfa/webauthn", json={"credential": credential}, headers=headers
        )
        assert stored.status_code == 201, stored.get_json()

    for key in (first, second):
        options = _options(client)
        response = _login(client, options, key.assertion(options))
        assert response.status_code == 200, response.get_json()
