"""The WebAuthn second step: POST /v1/login/mfa/webauthn-options and POST /v1/login/mfa."""

from __future__ import annotations

import dataclasses
import json
import secrets
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import func, select, update

from authsvc.app import rate_limit_policies
from authsvc.db import utcnow
from authsvc.models import AuditEvent, User, WebauthnChallenge, WebauthnCredential
from authsvc.ratelimit import RateLimiter
from authsvc.services import user_tokens, webauthn
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

OPTIONS = "/v1/login/mfa/webauthn-options"
RESET_OPTIONS = "/v1/password/reset/webauthn-options"
# The two steps that ask for a security key: (options route, token field, answer route).
STEPS = {
    "login": (OPTIONS, "mfa_token", "/v1/login/mfa"),
    "reset": (RESET_OPTIONS, "token", "/v1/password/reset"),
}


def _options(client, token):
    response = client.post(OPTIONS, json={"mfa_token": token})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _complete(client, token, credential):
    return client.post("/v1/login/mfa", json={"mfa_token": token, "webauthn": credential})


def _amr(body):
    return jwt.decode(body["access_token"], options={"verify_signature": False})["amr"]


def _policy(app, **changes):
    rt = runtime(app)
    rt.settings = dataclasses.replace(rt.settings, **changes)
    rt.deps = dataclasses.replace(rt.deps, settings=rt.settings)


@pytest.fixture
def enrolled(client, api):
    """Ada with one hardware key; her password login now asks for it."""
    key = SoftAuthenticator()
    enroll(client, signed_in(api), key)
    return key


def test_password_then_key_logs_in_with_hwk(app, client, api, enrolled):
    login = api.login("ada@example.com", PASSWORD).get_json()
    assert login["status"] == "mfa_required" and "webauthn" in login["methods"]
    options = _options(client, login["mfa_token"])
    assert [c["id"] for c in options["allowCredentials"]] == [b64url(enrolled.only_key())]
    assert options["userVerification"] == "preferred"
    assert options["rpId"] == "localhost"
    response = _complete(client, login["mfa_token"], enrolled.assertion(options))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "authenticated"
    assert _amr(body) == ["pwd", "hwk", "mfa"]
    with runtime(app).sessionmaker() as session:
        row = session.scalar(select(WebauthnCredential))
        assert row.sign_count == 1 and row.last_used_at is not None


def test_a_synced_passkey_answers_swk(client, api):
    key = SoftAuthenticator(backup_eligible=True, counter=False)
    enroll(client, signed_in(api), key)
    token = mfa_token(api)
    response = _complete(client, token, key.assertion(_options(client, token)))
    assert response.status_code == 200
    assert _amr(response.get_json()) == ["pwd", "swk", "mfa"]


def test_counterless_authenticators_are_not_clones(client, api):
    key = SoftAuthenticator(counter=False)
    enroll(client, signed_in(api), key)
    for _ in range(2):
        token = mfa_token(api)
        response = _complete(client, token, key.assertion(_options(client, token)))
        assert response.status_code == 200
        assert response.get_json()["status"] == "authenticated"


def test_options_list_only_this_users_keys(client, api, enrolled):
    bob_key = SoftAuthenticator()
    enroll(client, signed_in(api, "bob@example.com"), bob_key)
    options = _options(client, mfa_token(api, "bob@example.com"))
    assert [c["id"] for c in options["allowCredentials"]] == [b64url(bob_key.only_key())]


def test_a_key_of_another_user_is_refused(client, api, enrolled):
    bob_key = SoftAuthenticator()
    enroll(client, signed_in(api, "bob@example.com"), bob_key)
    token = mfa_token(api)  # ada
    options = _options(client, token)
    credential = bob_key.assertion(options, credential_id=bob_key.only_key())
    response = _complete(client, token, credential)
    assert response.status_code == 401
    body = response.get_json()
    assert body["code"] == "invalid_mfa" and body["reason"] == "unknown_credential"


def test_a_user_handle_of_another_account_is_refused(client, api, enrolled):
    token = mfa_token(api)
    credential = enrolled.assertion(_options(client, token))
    credential["response"]["userHandle"] = b64url(secrets.token_bytes(32))
    response = _complete(client, token, credential)
    body = response.get_json()
    assert (response.status_code, body.get("code"), body.get("reason")) == (
        401,
        "invalid_mfa",
        "user_handle_mismatch",
    )
    without_handle = enrolled.assertion(_options(client, token), user_handle=False)
    assert _complete(client, token, without_handle).status_code == 200  # absent is fine


def test_a_challenge_is_accepted_once(client, api, enrolled):
    token = mfa_token(api)
    options = _options(client, token)
    credential = enrolled.assertion(options)
    assert _complete(client, token, credential).status_code == 200
    token = mfa_token(api)
    response = _complete(client, token, credential)
    assert response.status_code == 401
    assert response.get_json()["reason"] == "invalid_challenge"


def test_a_challenge_is_bound_to_its_user(client, api, enrolled):
    bob_key = SoftAuthenticator()
    enroll(client, signed_in(api, "bob@example.com"), bob_key)
    bob_options = _options(client, mfa_token(api, "bob@example.com"))
    token = mfa_token(api)  # ada answers a challenge issued for bob
    credential = enrolled.assertion(bob_options, credential_id=enrolled.only_key())
    response = _complete(client, token, credential)
    assert response.status_code == 401
    assert response.get_json()["reason"] == "invalid_challenge"


def test_a_challenge_is_bound_to_the_step_that_asked_for_it(client, api, mailbox, enrolled):
    # Another login step of the same user, or a reset link's step, cannot spend it.
    first, second = mfa_token(api), mfa_token(api)
    credential = enrolled.assertion(_options(client, first))
    response = _complete(client, second, credential)
    assert (response.status_code, response.get_json()["reason"]) == (401, "invalid_challenge")
    client.post("/v1/password/forgot", json={"email": "ada@example.com"})
    api.drain()
    link = mailbox.token("ada@example.com", "reset-password")
    options = client.post("/v1/password/reset/webauthn-options", json={"token": link})
    from_reset = enrolled.assertion(options.get_json())
    response = _complete(client, second, from_reset)
    assert (response.status_code, response.get_json()["reason"]) == (401, "invalid_challenge")

    assert _complete(client, first, credential).status_code == 200  # its own step


def test_wrong_origin_is_refused(client, api, enrolled):
    token = mfa_token(api)
    credential = enrolled.assertion(_options(client, token), origin="https://evil.example")
    response = _complete(client, token, credential)
    assert response.status_code == 401
    assert response.get_json()["reason"] == "not_verified"


@pytest.mark.parametrize("framing", CROSS_ORIGIN_FRAMES, ids="+".join)
def test_an_answer_from_a_cross_origin_frame_is_refused(client, api, enrolled, framing):
    token = mfa_token(api)
    credential = enrolled.assertion(_options(client, token), extra_client_data=framing)
    response = _complete(client, token, credential)
    body = response.get_json()
    assert (response.status_code, body.get("code"), body.get("reason")) == (
        401,
        "invalid_mfa",
        "cross_origin",
    )


def _last_event(app, type_):
    with runtime(app).sessionmaker() as session:
        return session.scalars(
            select(AuditEvent).where(AuditEvent.type == type_).order_by(AuditEvent.id.desc())
        ).first()


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"origin": "https://evil.example"}, "not_verified"),
        ({"extra_client_data": CROSS_ORIGIN_FRAMES[0]}, "cross_origin"),
    ],
    ids=["relayed", "framed"],
)
def test_a_refused_answer_is_in_the_trail_with_its_reason(
    app, client, api, mailbox, enrolled, answer, reason
):
    # A relayed or framed assertion is what phishing looks like: the trail says so, at the
    # login step as at a passkey login or a registration, and at the reset step too.
    token = mfa_token(api)
    response = _complete(client, token, enrolled.assertion(_options(client, token), **answer))
    assert response.status_code == 401
    event = _last_event(app, "login.mfa")
    assert event.outcome == "failure"
    assert json.loads(event.details) == {"attempts": 1, "reason": reason}

    client.post("/v1/password/forgot", json={"email": "ada@example.com"})
    api.drain()
    link = mailbox.token("ada@example.com", "reset-password")
    options = client.post("/v1/password/reset/webauthn-options", json={"token": link})
    response = client.post(
        "/v1/password/reset",
        json={
            "token": link,
            "new_password": "another horse 43",
            "webauthn": enrolled.assertion(options.get_json(), **answer),
        },
    )
    assert response.status_code == 401
    event = _last_event(app, "password.reset")
    assert event.outcome == "invalid_mfa"
    assert json.loads(event.details) == {"reason": reason}


def test_a_bad_signature_is_refused(client, api, enrolled):
    token = mfa_token(api)
    credential = enrolled.assertion(_options(client, token))
    credential["response"]["signature"] = b64url(b"\x30\x06\x02\x01\x01\x02\x01\x01")
    response = _complete(client, token, credential)
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_mfa"


def test_backed_up_without_backup_eligibility_is_refused(app, client, api, enrolled):
    # WebAuthn L3 7.2: BS set without BE is a state no authenticator can be in.
    enrolled.backed_up = True
    token = mfa_token(api)
    response = _complete(client, token, enrolled.assertion(_options(client, token)))
    body = response.get_json()
    assert (response.status_code, body["code"], body["reason"]) == (
        401,
        "invalid_mfa",
        "not_verified",
    )
    with runtime(app).sessionmaker() as session:
        assert session.scalar(select(WebauthnCredential.last_used_at)) is None


def test_an_answer_without_user_presence_is_refused(app, client, api, enrolled):
    # WebAuthn L3 7.2: UP is required, whatever the user verification policy.
    token = mfa_token(api)
    response = _complete(client, token, enrolled.assertion(_options(client, token), up=False))
    body = response.get_json()
    assert (response.status_code, body["code"], body["reason"]) == (
        401,
        "invalid_mfa",
        "not_verified",
    )


def test_required_user_verification(app, client, api, enrolled):
    _policy(app, webauthn_user_verification="required")
    token = mfa_token(api)
    options = _options(client, token)
    assert options["userVerification"] == "required"
    response = _complete(client, token, enrolled.assertion(options, uv=False))
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_mfa"


def test_a_cloned_key_is_refused_audited_and_mailed(app, client, api, enrolled, mailbox):
    token = mfa_token(api)
    assert _complete(client, token, enrolled.assertion(_options(client, token))).status_code == 200
    with runtime(app).sessionmaker() as session, session.begin():
        session.execute(update(WebauthnCredential).values(sign_count=50))
    token = mfa_token(api)
    response = _complete(client, token, enrolled.assertion(_options(client, token)))
    assert response.status_code == 401
    assert response.get_json()["reason"] == "sign_count_regression"
    with runtime(app).sessionmaker() as session:
        event = session.scalar(
            select(AuditEvent).where(AuditEvent.type == "mfa.webauthn.counter_regression")
        )
        assert event.outcome == "rejected" and '"received": 2' in event.details
        row = session.scalar(select(WebauthnCredential))
        assert row.sign_count == 50 and row.counter_regression_at is not None
    api.drain()
    assert "went backwards" in mailbox.last("ada@example.com").get_content()


def test_flag_policy_lets_a_regression_in_and_records_it(app, client, api, enrolled, mailbox):
    _policy(app, webauthn_on_counter_regression="flag")
    with runtime(app).sessionmaker() as session, session.begin():
        session.execute(update(WebauthnCredential).values(sign_count=50))
    token = mfa_token(api)
    response = _complete(client, token, enrolled.assertion(_options(client, token)))
    assert response.status_code == 200
    with runtime(app).sessionmaker() as session:
        event = session.scalar(
            select(AuditEvent).where(AuditEvent.type == "mfa.webauthn.counter_regression")
        )
        assert event.outcome == "flagged"
        assert session.scalar(select(WebauthnCredential)).sign_count == 50
    api.drain()
    assert "allowed, and recorded" in mailbox.last("ada@example.com").get_content()


def test_a_denied_model_is_refused_at_login_too(app, client, api, enrolled):
    _policy(app, webauthn_aaguid_deny=("00000000-0000-0000-0000-000000000000",))
    token = mfa_token(api)
    response = _complete(client, token, enrolled.assertion(_options(client, token)))
    assert response.status_code == 401
    assert response.get_json()["reason"] == "aaguid_denied"


def test_options_need_a_live_mfa_token(client):
    response = client.post(OPTIONS, json={"mfa_token": "mfa_nonsense"})
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_token"


def test_options_are_refused_where_the_step_would_be(app, client, api, enrolled):
    # A disabled account, or a login begun before a breach response invalidated the password:
    # the step refuses the token, so the options do not hand out a challenge and key list.
    disabled, invalidated = mfa_token(api), mfa_token(api)
    with runtime(app).sessionmaker() as session, session.begin():
        session.execute(update(User).values(disabled_at=utcnow()))
    assert client.post(OPTIONS, json={"mfa_token": disabled}).get_json()["code"] == "invalid_token"
    with runtime(app).sessionmaker() as session, session.begin():
        session.execute(update(User).values(disabled_at=None, password_invalidated_at=utcnow()))
    response = client.post(OPTIONS, json={"mfa_token": invalidated})
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_token")


def test_a_malformed_answer_is_400_and_costs_no_attempt(client, api, enrolled):
    # Like a TOTP code of the wrong shape: five malformed answers, then the right one.
    token = mfa_token(api)
    for _ in range(5):
        response = _complete(client, token, {"type": "public-key", "response": {}})
        assert (response.status_code, response.get_json()["code"]) == (
            400,
            "invalid_webauthn_response",
        )

    assert _complete(client, token, enrolled.assertion(_options(client, token))).status_code == 200


@pytest.mark.parametrize("case", sorted(UNPARSABLE_ASSERTIONS))
def test_an_answer_that_does_not_parse_is_400_and_costs_no_attempt(client, api, enrolled, case):
    # Parsed before it is checked: it costs no attempt of the mfa_token, none of the account's
    # 10 answers a minute, and does not spend the challenge.
    token = mfa_token(api)
    options = _options(client, token)
    for _ in range(11):
        response = _complete(
            client, token, UNPARSABLE_ASSERTIONS[case](enrolled.assertion(options))
        )
        body = response.get_json()
        assert (response.status_code, body.get("code"), body.get("reason")) == (
            400,
            "invalid_webauthn_response",
            "malformed",
        )

    assert _complete(client, token, enrolled.assertion(options)).status_code == 200


def test_options_for_an_account_without_keys(app, client, api):
    api.register("ada@example.com", PASSWORD)
    with runtime(app).sessionmaker() as session, session.begin():
        user = session.scalar(select(User))
        token = user_tokens.issue(
            session, user_id=user.id, purpose="mfa", ttl=timedelta(minutes=5), now=utcnow()
        )
    response = client.post(OPTIONS, json={"mfa_token": token})
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"


def test_a_removed_key_is_no_longer_asked_for(app, client, api, enrolled):
    with runtime(app).sessionmaker() as session, session.begin():
        row = session.scalar(select(WebauthnCredential))
        webauthn.delete_credential(session, user_id=row.user_id, credential_id=row.id, now=utcnow())
    assert api.login("ada@example.com", PASSWORD).get_json()["status"] == "authenticated"


# --- limits on the options -----------------------------------------------------------------


def _step_token(step, api, client, mailbox):
    """A live token of ``step`` for Ada: an mfa_token, or a mailed reset link."""
    if step == "login":
        return mfa_token(api)
    client.post("/v1/password/forgot", json={"email": "ada@example.com"})
    api.drain()
    return mailbox.token("ada@example.com", "reset-password")


def _ask(client, step, token, ip="198.51.100.1"):
    path, field, _ = STEPS[step]
    return client.post(path, json={field: token}, environ_base={"REMOTE_ADDR": ip})


def _answer(client, step, token, credential):
    _, field, path = STEPS[step]
    body = {field: token, "webauthn": credential}
    if step == "reset":
        body["new_password"] = "another horse 43"
    return client.post(path, json=body)


@pytest.mark.parametrize("step", sorted(STEPS))
def test_options_are_limited_per_account(app, client, api, mailbox, enrolled, step):
    # Every options request writes a challenge: whoever holds a live token must not make
    # them without end, nor, with fresh tokens, for the same account.
    token = _step_token(step, api, client, mailbox)
    answers = [_ask(client, step, token, ip=f"198.51.100.{i}") for i in range(11)]

    assert [a.status_code for a in answers[:10]] == [200] * 10
    refused = answers[10]
    assert (refused.status_code, refused.get_json()["code"]) == (429, "rate_limited")
    assert refused.mimetype == "application/problem+json"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert _ask(client, step, _step_token(step, api, client, mailbox)).status_code == 429
    with runtime(app).sessionmaker() as session:
        hits = session.execute(
            select(AuditEvent.outcome, AuditEvent.user_id, AuditEvent.details).where(
                AuditEvent.type == "ratelimit.hit"
            )
        ).all()
        ada = session.scalar(select(User.id).where(User.email == "ada@example.com"))
    assert [tuple(h) for h in hits] == [
        ("mfa_account", ada, json.dumps({"action": "webauthn_options"}))
    ] * 2


@pytest.mark.parametrize("step", sorted(STEPS))
def test_options_are_limited_per_ip_before_any_token_is_looked_at(app, client, step):
    rt = runtime(app)
    rt.settings = dataclasses.replace(rt.settings, limit_ip="2/minute")
    rt.deps = dataclasses.replace(
        rt.deps,
        settings=rt.settings,
        limiter=RateLimiter(rt.settings.rate_limit_storage_url, rate_limit_policies(rt.settings)),
    )
    rt.deps.limiter.reset()
    try:
        guesses = [_ask(client, step, "mfa_nonsense") for _ in range(3)]
        elsewhere = _ask(client, step, "mfa_nonsense", ip="198.51.100.2")
    finally:
        rt.deps.limiter.reset()

    assert [g.status_code for g in guesses] == [400, 400, 429]
    assert guesses[2].get_json()["code"] == "rate_limited"
    assert int(guesses[2].headers["Retry-After"]) >= 1
    assert elsewhere.status_code == 400


@pytest.mark.parametrize("step", sorted(STEPS))
def test_new_options_replace_the_earlier_challenge_of_the_step(
    app, client, api, mailbox, enrolled, step
):
    # One challenge per token at a time: asking again makes the earlier one useless, so a
    # live token cannot pile rows up, and the newest options are the ones that work.
    token = _step_token(step, api, client, mailbox)
    first = _ask(client, step, token).get_json()
    for _ in range(3):
        latest = _ask(client, step, token).get_json()
    with runtime(app).sessionmaker() as session:
        rows = session.scalar(
            select(func.count())
            .select_from(WebauthnChallenge)
            .where(WebauthnChallenge.purpose == "mfa")
        )
    assert rows == 1

    stale = _answer(client, step, token, enrolled.assertion(first))
    assert (stale.status_code, stale.get_json()["reason"]) == (401, "invalid_challenge")
    assert _answer(client, step, token, enrolled.assertion(latest)).status_code in {200, 204}
