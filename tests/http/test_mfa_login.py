"""POST /v1/login/mfa with TOTP codes (oathtool) and recovery codes, and the password reset
of an account with a second factor."""

from __future__ import annotations

import jwt
import pytest
from sqlalchemy import select, update

from authsvc.db import utcnow
from authsvc.models import AuditEvent, User, UserToken
from authsvc.services import login as login_service
from tests.http.test_mfa_totp import PASSWORD, enable_totp, oathtool_code


def mfa_token(api, email="ada@example.com") -> str:
    response = api.login(email, PASSWORD)
    body = response.get_json()
    assert body["status"] == "mfa_required", body
    return body["mfa_token"]


def second_step(client, token, **proof):
    return client.post("/v1/login/mfa", json={"mfa_token": token, **proof})


def wrong_code(secret: str) -> str:
    valid = {oathtool_code(secret, offset_steps=o) for o in (-2, -1, 0, 1, 2)}
    return next(f"{n:06d}" for n in range(100) if f"{n:06d}" not in valid)


def amr_of(access_token: str) -> list[str]:
    return jwt.decode(access_token, options={"verify_signature": False})["amr"]


def test_password_alone_is_not_enough(api):
    enable_totp(api)

    body = api.login("ada@example.com", PASSWORD).get_json()

    assert body["status"] == "mfa_required"
    assert body["mfa_token"].startswith("mfa_")
    assert body["methods"] == ["totp", "recovery_code"]
    assert body["expires_in"] == 300
    assert "access_token" not in body


def test_a_totp_code_completes_the_login(api, client):
    factor = enable_totp(api)
    token = mfa_token(api)

    response = second_step(client, token, totp_code=oathtool_code(factor["secret"], offset_steps=1))

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "authenticated"
    assert amr_of(body["access_token"]) == ["pwd", "otp", "mfa"]
    assert client.get("/v1/me", headers=api.bearer(body["access_token"])).status_code == 200
    listed = client.get("/v1/me/mfa", headers=api.bearer(body["access_token"])).get_json()
    assert listed["factors"][0]["last_used_at"] is not None
    # The mfa_token is single-use.
    again = second_step(client, token, totp_code=oathtool_code(factor["secret"]))
    assert again.status_code == 400
    assert again.get_json()["code"] == "invalid_token"


def test_codes_with_spaces_are_accepted(api, client):
    factor = enable_totp(api)
    code = oathtool_code(factor["secret"], offset_steps=1)

    response = second_step(client, mfa_token(api), totp_code=f"{code[:3]} {code[3:]}")

    assert response.status_code == 200


def test_a_replayed_code_is_refused(api, client):
    factor = enable_totp(api)
    code = oathtool_code(factor["secret"], offset_steps=1)
    assert second_step(client, mfa_token(api), totp_code=code).status_code == 200

    response = second_step(client, mfa_token(api), totp_code=code)

    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_mfa"


def test_five_wrong_codes_kill_the_mfa_token(api, client, connection):
    factor = enable_totp(api)
    token = mfa_token(api)
    for _ in range(5):
        response = second_step(client, token, totp_code=wrong_code(factor["secret"]))
        assert response.status_code == 401
        assert response.get_json()["code"] == "invalid_mfa"

    dead = second_step(client, token, totp_code=oathtool_code(factor["secret"], offset_steps=1))

    assert dead.status_code == 400
    assert dead.get_json()["code"] == "invalid_token"
    failures = (
        connection.execute(select(AuditEvent.outcome).where(AuditEvent.type == "login.mfa"))
        .scalars()
        .all()
    )
    assert failures.count("failure") == 5


def test_attempts_per_account_are_limited_across_tokens(api, client):
    factor = enable_totp(api)
    bad = wrong_code(factor["secret"])
    answers = []
    for _ in range(3):
        token = mfa_token(api)
        for _ in range(4):
            answers.append(second_step(client, token, totp_code=bad))

    assert [r.status_code for r in answers[:10]] == [401] * 10
    limited = answers[10]
    assert limited.status_code == 429
    assert limited.get_json()["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    # The token that hit the limit is dead, even once the limit has passed.
    assert answers[11].status_code == 400
    assert answers[11].get_json()["code"] == "invalid_token"
    # Even the right code waits.
    right = second_step(
        client, mfa_token(api), totp_code=oathtool_code(factor["secret"], offset_steps=1)
    )
    assert right.status_code == 429


def test_a_recovery_code_copied_with_typographic_dashes_completes_the_login(api, client):
    factor = enable_totp(api)
    code = factor["recovery_codes"][0]

    response = second_step(client, mfa_token(api), recovery_code=code.replace("-", "\u2013"))

    assert response.status_code == 200
    assert amr_of(response.get_json()["access_token"]) == ["pwd", "otp", "mfa"]


@pytest.mark.parametrize(
    ("proof", "status", "code"),
    [
        ({"totp_code": "abcdef"}, 400, "invalid_request"),
        ({"totp_code": "12345"}, 400, "invalid_request"),
        ({"totp_code": "1234567"}, 400, "invalid_request"),
        ({"totp_code": "1" * 17}, 400, "invalid_request"),
        ({"totp_code": 123456}, 400, "invalid_request"),
        ({"recovery_code": "not-a-code"}, 400, "invalid_request"),
        ({}, 400, "invalid_request"),
        ({"totp_code": None}, 400, "invalid_request"),
        ({"totpcode": "123456"}, 400, "invalid_request"),  # a misspelt field
    ],
)
def test_bad_input_is_a_problem_with_a_stable_code(api, client, proof, status, code):
    enable_totp(api)

    response = second_step(client, mfa_token(api), **proof)

    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    assert response.get_json()["code"] == code


def test_unknown_expired_foreign_and_other_purpose_tokens(api, client, connection):
    ada = enable_totp(api)
    enable_totp(api, "eve@example.com")
    code = oathtool_code(ada["secret"], offset_steps=1)

    unknown = second_step(client, "mfa_" + "x" * 43, totp_code=code)
    assert (unknown.status_code, unknown.get_json()["code"]) == (400, "invalid_token")
    not_mfa = second_step(client, ada["access_token"], totp_code=code)
    assert (not_mfa.status_code, not_mfa.get_json()["code"]) == (400, "invalid_token")
    # Eve's token with Ada's code: the token is bound to Eve.
    foreign = second_step(client, mfa_token(api, "eve@example.com"), totp_code=code)
    assert (foreign.status_code, foreign.get_json()["code"]) == (401, "invalid_mfa")
    # An expired token.
    token = mfa_token(api)
    connection.execute(
        update(UserToken).where(UserToken.purpose == "mfa").values(expires_at=UserToken.created_at)
    )
    expired = second_step(client, token, totp_code=code)
    assert (expired.status_code, expired.get_json()["code"]) == (400, "invalid_token")


def test_a_recovery_code_completes_the_login_once(api, client, mailbox):
    factor = enable_totp(api)
    code = factor["recovery_codes"][3]

    response = second_step(client, mfa_token(api), recovery_code=code.upper())

    assert response.status_code == 200
    assert amr_of(response.get_json()["access_token"]) == ["pwd", "otp", "mfa"]
    api.drain()
    notice = mailbox.last("ada@example.com")
    assert notice["Subject"] == "A recovery code was used"
    assert "9 unused codes remain" in notice.get_content()
    again = second_step(client, mfa_token(api), recovery_code=code)
    assert (again.status_code, again.get_json()["code"]) == (401, "invalid_mfa")
    headers = api.bearer(response.get_json()["access_token"])
    assert client.get("/v1/me", headers=headers).get_json()["recovery_codes_remaining"] == 9


def test_password_reset_needs_the_second_factor(api, client):
    factor = enable_totp(api)
    client.post("/v1/password/forgot", json={"email": "ada@example.com"})
    api.drain()
    token = api.mailbox.token("ada@example.com", "reset-password")
    new = {"token": token, "new_password": "brand new horse 43"}

    missing = client.post("/v1/password/reset", json=new)
    assert missing.status_code == 401
    assert missing.get_json()["code"] == "mfa_required"
    assert missing.get_json()["methods"] == ["totp", "recovery_code"]
    wrong = client.post(
        "/v1/password/reset", json={**new, "totp_code": wrong_code(factor["secret"])}
    )
    assert (wrong.status_code, wrong.get_json()["code"]) == (401, "invalid_mfa")
    assert api.login("ada@example.com", "brand new horse 43").status_code == 401

    done = client.post(
        "/v1/password/reset",
        json={**new, "totp_code": oathtool_code(factor["secret"], offset_steps=1)},
    )

    assert done.status_code == 204
    after = api.login("ada@example.com", "brand new horse 43").get_json()
    assert after["status"] == "mfa_required"  # the factor survives the reset


def test_a_wrong_code_with_a_reset_link_is_audited(api, client, connection):
    factor = enable_totp(api)
    client.post("/v1/password/forgot", json={"email": "ada@example.com"})
    api.drain()
    token = api.mailbox.token("ada@example.com", "reset-password")

    wrong = client.post(
        "/v1/password/reset",
        json={
            "token": token,
            "new_password": "brand new horse 43",
            "totp_code": wrong_code(factor["secret"]),
        },
    )

    assert wrong.status_code == 401
    outcomes = connection.scalars(
        select(AuditEvent.outcome).where(AuditEvent.type == "password.reset")
    ).all()
    assert outcomes == ["invalid_mfa"]


def test_a_request_that_loses_the_race_for_its_mfa_token_spends_no_recovery_code(
    api, client, monkeypatch
):
    factor = enable_totp(api)
    code = factor["recovery_codes"][0]
    real_verify = login_service.factors.verify

    def verify_while_another_request_wins(session, *args, **kwargs):
        # The other request, holding the same mfa_token, spends it first.
        session.execute(
            update(UserToken)
            .where(UserToken.purpose == "mfa", UserToken.used_at.is_(None))
            .values(used_at=utcnow())
        )
        return real_verify(session, *args, **kwargs)

    monkeypatch.setattr(login_service.factors, "verify", verify_while_another_request_wins)
    lost = second_step(client, mfa_token(api), recovery_code=code)
    monkeypatch.undo()

    assert (lost.status_code, lost.get_json()["code"]) == (400, "invalid_token")
    again = second_step(client, mfa_token(api), recovery_code=code)
    assert again.status_code == 200  # the losing request's use of the code was rolled back


def test_a_login_begun_before_its_password_was_invalidated_does_not_finish(api, client, connection):
    # A breach response flags the account before it gets to revoke pending login steps.
    factor = enable_totp(api)
    token = mfa_token(api)
    connection.execute(
        update(User).where(User.email == "ada@example.com").values(password_invalidated_at=utcnow())
    )

    response = second_step(client, token, totp_code=oathtool_code(factor["secret"], offset_steps=1))

    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_token")


def test_requests_without_an_answer_cost_no_attempt(api, client):
    # A client's bug must not burn the user's sign-in: five of them, then the right code.
    factor = enable_totp(api)
    token = mfa_token(api)
    for _ in range(5):
        assert second_step(client, token).status_code == 400

    right = second_step(client, token, totp_code=oathtool_code(factor["secret"], offset_steps=1))

    assert right.status_code == 200


def test_two_answers_are_refused_and_spend_nothing(api, client, connection):
    # Only one answer would be checked: the other is refused, not silently ignored.
    factor = enable_totp(api)
    token = mfa_token(api)
    code = factor["recovery_codes"][0]
    right = oathtool_code(factor["secret"], offset_steps=1)

    both = second_step(client, token, totp_code=right, recovery_code=code)

    assert both.status_code == 400
    assert (both.get_json()["code"], both.get_json()["field"]) == ("invalid_request", "proof")
    attempts = connection.scalar(select(UserToken.attempts).where(UserToken.purpose == "mfa"))
    assert attempts == 0
    assert second_step(client, token, recovery_code=code).status_code == 200  # still unspent
    reset = client.post(
        "/v1/password/reset",
        json={"token": "x", "new_password": "brand new horse 43", "totp_code": right,
              "webauthn": {}},
    )  # fmt: skip
    assert (reset.status_code, reset.get_json()["field"]) == (400, "proof")


def test_codes_of_the_wrong_shape_cost_no_attempt_of_the_account(api, client):
    # Eleven typos (more than the 10 a minute the account's answers are limited to), then the
    # right code on the same mfa_token.
    factor = enable_totp(api)
    token = mfa_token(api)
    for proof in [{"totp_code": "12345"}] * 6 + [{"recovery_code": "x"}] * 5:
        typo = second_step(client, token, **proof)
        assert (typo.status_code, typo.get_json()["code"]) == (400, "invalid_request")

    right = second_step(client, token, totp_code=oathtool_code(factor["secret"], offset_steps=1))

    assert right.status_code == 200, right.get_json()


def test_recovery_code_guesses_with_a_reset_link_are_throttled(api, client, connection):
    enable_totp(api)
    client.post("/v1/password/forgot", json={"email": "ada@example.com"})
    api.drain()
    token = api.mailbox.token("ada@example.com", "reset-password")
    guesses = [
        client.post(
            "/v1/password/reset",
            json={
                "token": token,
                "new_password": "brand new horse 43",
                "recovery_code": f"0000-0000-0000-0000-0000-{n:04d}",
            },
        )
        for n in range(12)
    ]

    assert [g.status_code for g in guesses[:10]] == [401] * 10
    assert guesses[10].status_code == 429
    assert guesses[10].get_json()["code"] == "rate_limited"
    outcomes = connection.scalars(
        select(AuditEvent.outcome).where(AuditEvent.type == "password.reset")
    ).all()
    assert outcomes.count("invalid_mfa") == 10


def test_a_recovery_code_with_a_letter_outside_ascii_is_refused(api, client):
    # U+212A KELVIN SIGN lower-cases to "k": the code must be typed as openapi.yaml says.
    factor = enable_totp(api)
    code = next(c for c in factor["recovery_codes"] if "k" in c.lower())
    kelvin = code.lower().replace("k", "\u212a", 1)

    response = second_step(client, mfa_token(api), recovery_code=kelvin)

    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_request")
    assert second_step(client, mfa_token(api), recovery_code=code).status_code == 200
