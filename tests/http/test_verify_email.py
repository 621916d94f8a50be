"""POST /v1/signup/verify: the mailed link activates the account and its password."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from authsvc.crypto.tokens import token_hash
from authsvc.db import utcnow
from authsvc.models import AuditEvent, User, UserToken

PASSWORD = "correct horse 42"


def test_verify_email_activates_the_account(api, client, mailbox, connection):
    api.signup("ada@example.com", PASSWORD)
    assert api.login("ada@example.com", PASSWORD).status_code == 401  # not yet
    token = mailbox.token("ada@example.com", "verify-email")

    response = client.post("/v1/signup/verify", json={"token": token})

    assert response.status_code == 200
    assert response.get_json() == {"status": "verified"}
    user = connection.execute(select(User)).one()
    assert user.email_verified_at is not None
    assert user.password_hash.startswith("$argon2id$")
    assert api.login("ada@example.com", PASSWORD).get_json()["status"] == "authenticated"
    assert "signup.verified" in connection.scalars(select(AuditEvent.type)).all()


def test_a_disabled_account_is_not_verified(api, client, mailbox, connection):
    api.signup("ada@example.com", PASSWORD)
    token = mailbox.token("ada@example.com", "verify-email")
    connection.execute(update(User).values(disabled_at=utcnow()))

    response = client.post("/v1/signup/verify", json={"token": token})

    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_token")
    assert connection.execute(select(User.email_verified_at)).scalar_one() is None


def test_only_the_token_hash_is_stored(api, mailbox, connection):
    api.signup("ada@example.com", PASSWORD)
    token = mailbox.token("ada@example.com", "verify-email")

    stored = connection.scalars(select(UserToken.token_hash)).all()

    assert stored == [token_hash(token)]
    assert token not in stored


def test_a_link_works_once(api, client, mailbox):
    api.signup("ada@example.com", PASSWORD)
    token = mailbox.token("ada@example.com", "verify-email")
    assert client.post("/v1/signup/verify", json={"token": token}).status_code == 200

    again = client.post("/v1/signup/verify", json={"token": token})

    assert again.status_code == 400
    assert again.get_json()["code"] == "invalid_token"


@pytest.mark.parametrize("token", ["", "ve_nonsense", "x" * 512])
def test_unknown_tokens_are_refused(client, token):
    response = client.post("/v1/signup/verify", json={"token": token})

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "invalid_token"


def test_a_reset_token_does_not_verify(api, client, mailbox):
    api.register("ada@example.com", PASSWORD)
    client.post("/v1/password/forgot", json={"email": "ada@example.com"})
    api.drain()
    reset = mailbox.token("ada@example.com", "reset-password")

    response = client.post("/v1/signup/verify", json={"token": reset})

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_token"


def test_a_verify_token_does_not_reset(api, client, mailbox):
    api.signup("ada@example.com", PASSWORD)
    token = mailbox.token("ada@example.com", "verify-email")

    response = client.post(
        "/v1/password/reset", json={"token": token, "new_password": "other horse 43"}
    )

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_token"
    assert client.post("/v1/signup/verify", json={"token": token}).status_code == 200


def test_the_token_field_is_required(client):
    response = client.post("/v1/signup/verify", json={})

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"
    assert response.get_json()["field"] == "token"
