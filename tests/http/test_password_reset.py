"""POST /v1/password/forgot and /v1/password/reset."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from authsvc.db import utcnow
from authsvc.models import AuditEvent, User
from tests.conftest import runtime

PASSWORD = "correct horse 42"
NEW_PASSWORD = "brand new horse 43"


def forgot(api, email: str):
    response = api.client.post("/v1/password/forgot", json={"email": email})
    api.drain()
    return response


def reset(client, token: str, new_password: str = NEW_PASSWORD, **extra):
    return client.post(
        "/v1/password/reset", json={"token": token, "new_password": new_password, **extra}
    )


def test_forgot_answers_202_and_mails_a_reset_link(api, mailbox, settings):
    api.register()

    response = forgot(api, "ada@example.com")

    assert response.status_code == 202
    assert response.get_json() == {"status": "reset_sent"}
    message = mailbox.last("ada@example.com")
    assert message["Subject"] == "Reset your password"
    assert f"{settings.public_url}/reset-password?token=rp_" in message.get_content()


def test_forgot_for_an_unknown_email_mails_a_no_account_notice(api, mailbox):
    response = forgot(api, "nobody@example.com")

    assert response.status_code == 202
    assert response.get_json() == {"status": "reset_sent"}
    [notice] = mailbox.messages("nobody@example.com")
    assert notice["Subject"] == "Password reset request"
    assert "no such account" in notice.get_content()
    assert "token=" not in notice.get_content()


def test_forgot_for_a_disabled_account_mails_nothing(api, mailbox, connection):
    api.register()
    sent = len(mailbox.messages())
    connection.execute(update(User).values(disabled_at=utcnow()))

    assert forgot(api, "ada@example.com").status_code == 202
    assert len(mailbox.messages()) == sent


def test_reset_sets_the_new_password(api, client, mailbox):
    api.register()
    forgot(api, "ada@example.com")
    token = mailbox.token("ada@example.com", "reset-password")

    response = reset(client, token)

    assert response.status_code == 204
    assert response.get_data() == b""
    assert api.login("ada@example.com", NEW_PASSWORD).get_json()["status"] == "authenticated"
    old = api.login("ada@example.com", PASSWORD)
    assert old.status_code == 401
    assert old.get_json()["code"] == "invalid_credentials"


def test_reset_revokes_every_session(api, client, mailbox):
    api.register()
    one, two = api.tokens(), api.tokens()
    forgot(api, "ada@example.com")

    assert reset(client, mailbox.token("ada@example.com", "reset-password")).status_code == 204

    for tokens in (one, two):
        me = client.get("/v1/me", headers=api.bearer(tokens["access_token"]))
        assert me.status_code == 401
        assert me.get_json()["code"] == "unauthenticated"
        refreshed = client.post(
            "/v1/token/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 400
        assert refreshed.get_json()["code"] == "invalid_token"


def test_reset_mails_a_password_changed_notice(api, client, mailbox):
    api.register()
    forgot(api, "ada@example.com")
    reset(client, mailbox.token("ada@example.com", "reset-password"))
    api.drain()

    notice = mailbox.last("ada@example.com")

    assert notice["Subject"] == "Your password was changed"
    assert "/reset-password?token=rp_" in notice.get_content()
    assert NEW_PASSWORD not in notice.get_content()


def test_a_reset_link_works_once(api, client, mailbox, connection):
    api.register()
    forgot(api, "ada@example.com")
    token = mailbox.token("ada@example.com", "reset-password")
    assert reset(client, token).status_code == 204

    again = reset(client, token, "third horse 44")

    assert again.status_code == 400
    assert again.get_json()["code"] == "invalid_token"
    assert api.login("ada@example.com", NEW_PASSWORD).status_code == 200
    assert "password.reset" in connection.scalars(select(AuditEvent.type)).all()


def test_a_newer_reset_link_kills_the_older_one(api, client, mailbox):
    api.register()
    forgot(api, "ada@example.com")
    older = mailbox.token("ada@example.com", "reset-password")
    forgot(api, "ada@example.com")
    newer = mailbox.token("ada@example.com", "reset-password")

    assert reset(client, older).get_json()["code"] == "invalid_token"
    assert reset(client, newer).status_code == 204


@pytest.mark.parametrize(
    ("password", "reason"),
    [("short", "too_short"), ("qwerty123456", "breached"), ("y" * 257, "too_long")],
)
def test_a_weak_new_password_is_refused_and_the_link_survives(
    api, client, mailbox, password, reason
):
    api.register()
    forgot(api, "ada@example.com")
    token = mailbox.token("ada@example.com", "reset-password")

    refused = reset(client, token, password)

    assert refused.status_code == 400
    assert refused.get_json()["code"] == "weak_password"
    assert refused.get_json()["reason"] == reason
    assert reset(client, token).status_code == 204


def test_reset_of_an_unverified_account_verifies_it(api, client, mailbox):
    api.signup("ada@example.com", PASSWORD)  # never opens the verification link
    forgot(api, "ada@example.com")

    assert reset(client, mailbox.token("ada@example.com", "reset-password")).status_code == 204

    assert api.login("ada@example.com", NEW_PASSWORD).get_json()["status"] == "authenticated"


def test_reset_of_a_disabled_account_is_refused(api, client, mailbox, connection):
    api.register()
    forgot(api, "ada@example.com")
    token = mailbox.token("ada@example.com", "reset-password")
    connection.execute(update(User).values(disabled_at=utcnow()))

    response = reset(client, token)

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_token"


@pytest.mark.parametrize("body", [{"token": "rp_x"}, {"new_password": NEW_PASSWORD}])
def test_missing_fields(client, body):
    response = client.post("/v1/password/reset", json=body)

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"


class BusyHasher:
    """Every hashing slot taken, as under a flood of logins: the next hash gives up at once."""

    def __init__(self, app) -> None:
        self.hasher = runtime(app).deps.hasher
        self.hasher._acquire_timeout = 0.01
        self.taken = 0
        while self.hasher._slots.acquire(blocking=False):
            self.taken += 1

    def release(self) -> None:
        for _ in range(self.taken):
            self.hasher._slots.release()
        self.taken = 0


def test_an_overloaded_reset_spends_nothing(api, app, client, mailbox):
    api.register()
    forgot(api, "ada@example.com")
    token = mailbox.token("ada@example.com", "reset-password")
    busy = BusyHasher(app)
    try:
        refused = reset(client, token)
    finally:
        busy.release()

    assert (refused.status_code, refused.get_json()["code"]) == (503, "overloaded")
    assert refused.headers["Retry-After"]
    # The retry the answer asks for finds the link unspent.
    assert reset(client, token).status_code == 204
    assert api.login("ada@example.com", NEW_PASSWORD).get_json()["status"] == "authenticated"
